"""bench/queue_order.py: the queue rebuilt from a finished run's files and scored against the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.queue_order import found_per_100, markdown, plain_sum, score_run


def test_found_per_100_counts_wrong_labels_in_the_top_k() -> None:
    wrong = np.zeros(100, bool)
    wrong[:10] = True
    score = -np.arange(100, dtype=float)  # the wrong ones first
    assert found_per_100(score, wrong) == [100.0, 100.0, 100.0, 50.0]
    assert plain_sum(np.array([1.0, 0.0]), np.array([1.0, 0.0])).tolist() == [0.0, 1.0]


def test_score_run_rebuilds_both_orders_from_the_run_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, classes = 200, ["a", "b"]
    true = np.repeat([0, 1], n // 2)
    given = true.copy()
    given[::10] = 1 - given[::10]  # 20 wrong labels
    features = (np.eye(2)[true] * 3 + rng.normal(size=(n, 2))).astype(np.float32)
    wrong = given != true
    clean_prob = np.where(wrong, rng.uniform(0, 0.3, n), rng.uniform(0.5, 1, n))
    pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "given_label": np.array(classes)[given],
                  "true_label": np.array(classes)[true], "clean_prob": clean_prob}).to_csv(tmp_path / "samples.csv")
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "pretrain": {"epochs": 2}, "classify": {"epochs": 3}}))
    (tmp_path / "source.json").write_text(json.dumps({"classes": classes}))
    np.savez(tmp_path / "predictions.npz", features=features, probs=np.full((n, 2), 0.5, np.float32))
    r = score_run(tmp_path, None)
    assert (r["n"], r["wrong"], r["epochs"]) == (200, 20, (2, 3))
    assert set(r["rows"]) == {"plain sum (before)", "ranks (today)", "mixture alone", "out-of-fold alone",
                              "ranks + 10 neighbours' disagreement", "out-of-fold / its class mean"}
    for name in ("plain sum (before)", "ranks (today)"):
        row = r["rows"][name]
        assert row["found"][0] == 100.0 and row["auroc"] > 0.95  # both find separable wrong labels first
    for name, row in r["rows"].items():
        assert row["auroc"] > 0.9, name  # every alternative is a real order, not noise
    assert "| ranks (today) | 100.0 |" in markdown([r], "python bench/queue_order.py X")
