"""A weak model's flag count is said to be rough: the rule (engine.review.estimate) and the CLI's summary."""

from __future__ import annotations

import pytest

from engine.cli.run import _print_summary
from engine.review.estimate import ROUGH_COUNT, count_is_rough

SUMMARY = {"kind": "summary", "phase": "fit", "images": 5000, "classes": 10, "flagged": 998, "seconds": 562.0,
           "stem": "standard", "device": "cpu"}


@pytest.mark.parametrize(("split", "rough"), [
    ({"competence": 0.5, "min_competence": 0.9}, True),
    ({"competence": 0.9, "min_competence": 0.9}, False),  # at the bar: labels may change by themselves
    ({"competence": 0.95}, False),  # the bar defaults to 0.9
    ({"competence": 0.85}, True),
    ({}, False),  # an older run without a competence says nothing it cannot back
])
def test_the_count_is_rough_below_the_relabel_bar(split: dict, rough: bool) -> None:
    assert count_is_rough(split) is rough


def test_the_fit_summary_says_a_weak_models_count_is_rough(capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({**SUMMARY, "competence": 0.5, "min_competence": 0.9})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "fit: 5000 images, 10 classes, 998 flagged (20.0%), 562 s on cpu"
    assert out[1] == ("  the model agrees with 50% of the labels it believes clean (held out; 90% needed before a "
                      f"label changes by itself). {ROUGH_COUNT}")


@pytest.mark.parametrize("extra", [{"competence": 0.97, "min_competence": 0.9},
                                   {"competence": None, "min_competence": None}, {}])
def test_a_competent_or_unknown_model_gets_no_note(extra: dict, capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary({**SUMMARY, **extra})
    assert capsys.readouterr().out.splitlines() == ["fit: 5000 images, 10 classes, 998 flagged (20.0%), 562 s on cpu"]
