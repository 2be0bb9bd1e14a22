"""Detection metrics against a truth file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.review.metrics import detection_metrics, find_truth, load_truth


def test_metrics_by_hand() -> None:
    given = np.array(["a", "a", "b", "b", "b"], dtype=object)
    true = np.array(["a", "b", "b", "a", None], dtype=object)  # last image has no truth row
    flagged = np.array([0, 1, 1, 1, 1])
    clean_prob = np.array([0.9, 0.1, 0.4, 0.2, 0.0])
    predicted = np.array(["a", "b", "b", "b", "a"], dtype=object)
    corrected = np.array(["a", "b", None, "b", "a"], dtype=object)  # third discarded
    m = detection_metrics(given=given, true=true, flagged=flagged, clean_prob=clean_prob, predicted=predicted,
                          corrected=corrected)
    assert m["n"] == 4 and m["n_mislabeled"] == 2
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4) and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(0.8, abs=1e-4)
    assert m["auroc"] == 1.0  # both wrong ones have lower clean_prob than both right ones
    assert m["corrected_accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # a, b(wrong->b ok), b vs a wrong
    assert m["pseudo_label_accuracy"] == 0.75
    assert m["given_label_accuracy"] == 0.5


def test_load_truth_aligns_by_path(tmp_path: Path) -> None:
    (tmp_path / "truth.csv").write_text('path,true_label,given_label\nb/2.png,"x, ""y""",b\na/1.png,a,a\n')
    out = load_truth(tmp_path / "truth.csv", ["a/1.png", "b/2.png", "c/3.png"])
    assert list(out) == ["a", 'x, "y"', None]
    assert find_truth(tmp_path) == tmp_path / "truth.csv"


def test_truth_file_errors_are_specific(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("file,label\nx,y\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_truth(tmp_path / "t.csv", ["x"])
    (tmp_path / "u.csv").write_text("path,true_label\nother.png,y\n")
    with pytest.raises(ValueError, match="names none of the 1 images"):
        load_truth(tmp_path / "u.csv", ["x.png"])


def test_empty_or_foreign_truth_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv is empty"):
        load_truth(tmp_path / "empty.csv", ["x.png"])
    (tmp_path / "other.csv").write_text("path,true_label\nx.png,7\n")  # another dataset's labels
    with pytest.raises(ValueError, match="none of its true labels is a class of this dataset"):
        load_truth(tmp_path / "other.csv", ["x.png"], ("cat", "dog"))
    assert list(load_truth(tmp_path / "other.csv", ["x.png"], ("7", "8"))) == ["7"]


def test_flag_scores_match_the_definitions_on_edge_cases() -> None:
    """No flag, no mislabeled image, everything flagged: precision/recall/F1 are 0 where undefined."""

    def scores(given, true, flagged):
        n = len(given)
        m = detection_metrics(given=np.array(given, dtype=object), true=np.array(true, dtype=object),
                              flagged=np.array(flagged), clean_prob=np.linspace(1, 0, n),
                              predicted=np.array(true, dtype=object), corrected=np.array(true, dtype=object))
        return m["precision"], m["recall"], m["f1"]

    assert scores(["a", "a"], ["a", "a"], [0, 0]) == (0.0, 0.0, 0.0)  # nothing wrong, nothing flagged
    assert scores(["a", "b"], ["a", "a"], [0, 0]) == (0.0, 0.0, 0.0)  # one wrong, none flagged
    assert scores(["a", "a"], ["a", "a"], [1, 1]) == (0.0, 0.0, 0.0)  # flags, but nothing is wrong
    assert scores(["a", "b", "b", "a"], ["a", "a", "b", "b"], [1, 1, 0, 1]) == (
        pytest.approx(2 / 3, abs=1e-4), 1.0, pytest.approx(0.8, abs=1e-4))
