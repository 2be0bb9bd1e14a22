"""Near-duplicates and outlier scores (engine.method.evidence and its parts) and how readers see them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.config import EvidenceConfig
from engine.method.duplicates import find_duplicates
from engine.method.evidence import evidence_columns
from engine.method.neighbours import NONE, nearest_neighbours, similarities
from engine.method.outliers import knn_distance, percentile_scores
from engine.review.findings import finding_counts, group_members


def _photos(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random 32 px colour images: each distinct, none a copy of another (unlike stripes or digits)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    fine = np.kron(coarse, np.ones((1, 4, 4, 1), np.float32)) + rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(fine, 0, 255).astype(np.uint8)


def test_similarities_are_the_cosines_of_the_found_neighbours() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]], np.float32)
    ids = nearest_neighbours(x, 3)
    sims = similarities(x, ids)
    assert ids[0].tolist() == [1, 2, NONE]
    np.testing.assert_allclose(sims[0, :2], [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(sims[2, :2], [0.8, 0.0], atol=1e-6)
    assert np.isnan(sims[:, 2]).all()


def test_outlier_score_is_the_percentile_of_the_mean_distance() -> None:
    sims = np.array([[0.9, 0.7], [0.2, np.nan], [np.nan, np.nan], [0.5, 0.5]], np.float32)
    np.testing.assert_allclose(knn_distance(sims), [0.2, 0.8, 0.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(percentile_scores(np.array([3.0, 1.0, 2.0, 2.0, 5.0])), [0.75, 0, 0.375, 0.375, 1])


def test_a_copy_under_another_label_is_a_conflicting_group() -> None:
    images = _photos(40)
    images[7] = images[3]  # the same picture filed twice
    images[20] = images[11][:, ::-1]  # a mirrored copy
    labels = np.zeros(40, np.int64)
    labels[7] = 1  # under another class
    d = find_duplicates(images, labels)
    assert d.group[3] == d.group[7] != -1 and d.group[11] == d.group[20] != -1 and d.group[3] != d.group[11]
    assert (d.group != -1).sum() == 4
    assert d.conflict[[3, 7]].tolist() == [1, 1] and d.conflict[[11, 20]].tolist() == [0, 0]


def test_look_alikes_without_copies_form_no_group() -> None:
    # forty noisy copies of one stripe pattern: all alike, none a copy of another (the stripes of the tests' data)
    rng = np.random.default_rng(0)
    stripes = ((np.mgrid[0:32, 0:32][0] // 2) % 2 * 180)[None, :, :, None] + rng.integers(0, 60, (40, 32, 32, 1))
    d = find_duplicates(np.repeat(stripes, 3, axis=3).astype(np.uint8), np.arange(40) % 3)
    assert (d.group == -1).all()


def test_evidence_columns_from_the_split_neighbours() -> None:
    images = _photos(30, seed=1)
    images[5] = images[2]
    labels = np.array([0] * 15 + [1] * 15)
    labels[5] = 1
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 8)).astype(np.float32)
    features[29] = 100 * np.ones(8)  # far from everything else
    cfg = EvidenceConfig(outlier_neighbors=4)
    cols = evidence_columns(images, features, labels, nearest_neighbours(features, 6), cfg)
    assert cols["duplicate_conflict"][[2, 5]].tolist() == [1, 1] and cols["duplicate_conflict"].sum() == 2
    assert cols["outlier_score"].max() == 1.0 and cols["outlier_score"].min() == 0.0
    off = evidence_columns(images, features, labels, nearest_neighbours(features, 6), EvidenceConfig(enabled=False))
    assert (off["duplicate_group"] == -1).all() and np.isnan(off["outlier_score"]).all()


def test_findings_count_and_group_old_runs_as_nothing() -> None:
    s = pd.DataFrame({"duplicate_group": [0, 0, 1, 1, 1, -1], "duplicate_conflict": [1, 1, 0, 0, 0, 0],
                      "outlier_score": [0.1, 0.2, 0.995, 0.99, "", 0.5]})
    assert finding_counts(s) == {"duplicate_groups": 2, "conflicting_groups": 1, "outliers": 2}
    assert group_members(s, 3).tolist() == [2, 4] and group_members(s, 5).tolist() == []
    old = pd.DataFrame({"path": ["a", "b"]})
    assert finding_counts(old) == {"duplicate_groups": 0, "conflicting_groups": 0, "outliers": 0}


@pytest.mark.parametrize("bad", [{"outlier_neighbors": 0}, {"duplicate_match": 1.5}, {"duplicate_cosine": 0.0}])
def test_bad_evidence_settings_are_refused(bad: dict) -> None:
    from engine.config import ConfigError, RunConfig, with_overrides

    with pytest.raises(ConfigError):
        with_overrides(RunConfig(), {f"evidence.{k}": v for k, v in bad.items()})
