"""bench/flag_count.py: the count's rules rebuilt from a finished run's files and scored against the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.flag_count import TODAY, markdown, oof_loss, score, score_run, top_of_queue


def test_top_of_queue_and_the_score_of_a_count() -> None:
    assert top_of_queue(np.array([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [False, True, False, True]
    assert not top_of_queue(np.array([0.1, 0.9]), 0).any()
    given = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    wrong = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    flagged = np.array([1, 0, 0, 0, 1, 1, 0, 0], bool)
    r = score(flagged, wrong, given)
    assert (r["flagged"], r["ratio"]) == (3, 1.5)
    assert abs(r["f1"] - 0.4) < 1e-9  # precision 1/3, recall 1/2
    assert (r["error_max"], r["error_mean"]) == (50.0, 37.5)  # class 0: 25 % vs 50 %; class 1: 50 % vs 0 %
    clean = score(flagged, np.zeros(8, bool), given)
    assert clean["ratio"] is None and clean["f1"] is None


def test_the_out_of_fold_loss_is_the_given_labels_cross_entropy() -> None:
    oof = np.array([[0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    assert np.allclose(oof_loss(oof, np.array([0, 1, 0])), [-np.log(0.8), -np.log(0.5), -np.log(1e-6)])


def test_score_run_rebuilds_every_rule_from_the_run_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, classes = 400, ["a", "b"]
    true = np.repeat([0, 1], n // 2)
    given = true.copy()
    given[::5] = 1 - given[::5]  # 80 wrong labels
    wrong = given != true
    losses = np.where(wrong, rng.normal(3.0, 0.3, (3, n)), rng.normal(0.5, 0.3, (3, n))).clip(0)
    probs = np.where(np.eye(2, dtype=bool)[true], 0.9, 0.1).astype(np.float32)
    features = (np.eye(2)[true] * 3 + rng.normal(size=(n, 2))).astype(np.float32)
    pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "given_label": np.array(classes)[given],
                  "true_label": np.array(classes)[true], "flagged": wrong.astype(int),
                  "suspicion": losses.mean(0)}).to_csv(tmp_path / "samples.csv")
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "model": {"arch": "small-cnn"},
                                                      "split": {"average_last": 3, "reg_covar": 5e-4}}))
    (tmp_path / "source.json").write_text(json.dumps({"classes": classes}))
    np.savez(tmp_path / "predictions.npz", features=features, probs=probs, losses=losses)
    r = score_run(tmp_path)
    assert (r["n"], r["wrong"], r["arch"]) == (400, 80, "small-cnn")
    assert len(r["rows"]) == 9 and r["rows"][TODAY]["f1"] == 1.0
    reference = r["rows"]["the true count, top of the queue (reference)"]
    assert (reference["flagged"], reference["ratio"], reference["f1"]) == (80, 1.0, 1.0)
    for name, row in r["rows"].items():  # separable losses: every rule finds the wrong labels
        assert row["f1"] > 0.9, name
    assert set(r["competence"]) == {"tied", "full"}
    assert all(0.9 <= v <= 1.0 for v in r["competence"].values())  # features separate the true classes
    text = markdown([r], "python bench/flag_count.py X")
    assert "one variance per component" in text and f"{r['competence']['full']:.3f}" in text
    assert f"| {TODAY} | 80 (20.0 %) | 1.00 | 1.000 | 0.0 / 0.0 |" in text
