"""bench/encoder_speed.py: both encoders timed side by side, a table of their speeds and ratio."""

from __future__ import annotations

import argparse

from bench.encoder_speed import markdown, measure


def test_measure_times_both_encoders_and_the_table_gives_the_ratio() -> None:
    result = measure(rounds=1, steps=1, batch_size=2, size=16)
    assert set(result) == {"resnet18", "small-cnn"}
    assert all(row["images_per_s"] > 0 for row in result.values())
    assert result["small-cnn"]["parameters"] * 20 < result["resnet18"]["parameters"]
    text = markdown(result, argparse.Namespace(rounds=1, steps=1, batch_size=2, size=16))
    assert "| resnet18 | 11.18 M |" in text and "| 1.0× |" in text and "| small-cnn | 0.39 M |" in text
