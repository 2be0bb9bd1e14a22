"""The bar an automatic change must clear: neighbours, competence, and the three conditions together."""

from __future__ import annotations

import numpy as np

from engine.config import RelabelConfig
from engine.method.neighbours import NONE, label_votes, nearest_neighbours
from engine.method.relabel import competence, confident_relabels


def clusters(n_per: int = 60, classes: int = 3, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated blobs on the sphere: features of a competent encoder."""
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, 16)
    x = np.concatenate([centres[c] + spread * rng.standard_normal((n_per, 16)) for c in range(classes)])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per)


def test_label_votes_are_shares_of_the_neighbours() -> None:
    votes = label_votes(np.array([[1, 2, 3], [0, 0, 0]]), np.array([0, 1, 1, 2]), 3)
    assert np.allclose(votes, [[0, 2 / 3, 1 / 3], [1, 0, 0]])
    short = label_votes(np.array([[1, NONE], [NONE, NONE]]), np.array([0, 2]), 3)  # a run of two images
    assert np.allclose(short, [[0, 0, 1], [0, 0, 0]])


def _bar(probs, given, flagged, clean_prob, x, cfg, *, seed):
    """The bar as the split stage calls it: with the nearest images computed once for both uses."""
    nb = nearest_neighbours(x, max(5, cfg.neighbours))
    return confident_relabels(probs, given, flagged, clean_prob, x, nb, cfg, seed=seed)


def test_competence_is_high_for_separable_features_and_low_for_noise() -> None:
    x, y = clusters()
    assert competence(x, y, np.ones(len(y), bool), seed=0) > 0.95
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    assert competence(noise, y, np.ones(len(y), bool), seed=0) < 0.6
    assert competence(x, y, np.zeros(len(y), bool), seed=0) is None  # nothing looks clean: cannot tell


def _probs_for(suggested: np.ndarray, classes: int, p: float) -> np.ndarray:
    probs = np.full((len(suggested), classes), (1 - p) / (classes - 1), np.float32)
    probs[np.arange(len(suggested)), suggested] = p
    return probs


def test_a_competent_model_relabels_a_flagged_image_its_neighbours_agree_with() -> None:
    x, true = clusters()
    given = true.copy()
    given[[0, 1, 2]] = 1  # three class-0 images filed under class 1
    flagged = np.zeros(len(given), bool)
    flagged[[0, 1, 2, 70]] = True  # and one flagged image whose label is right
    probs = _probs_for(true, 3, 0.97)
    clean_prob = np.where(flagged, 0.1, 0.9)
    ev = _bar(probs, given, flagged, clean_prob, x, RelabelConfig(), seed=0)
    assert ev.competence is not None and ev.competence > 0.95
    assert np.flatnonzero(ev.auto).tolist() == [0, 1, 2]  # image 70: suggestion == given, nothing to change
    assert (ev.agreement[[0, 1, 2]] >= 0.9).all()


def test_nothing_changes_by_itself_when_the_model_is_not_competent() -> None:
    x, true = clusters()
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x.shape).astype(np.float32)  # features that carry no class
    given = true.copy()
    given[:3] = 1
    flagged = np.zeros(len(given), bool)
    flagged[:3] = True
    probs = _probs_for(true, 3, 0.99)  # however sure the classifier is
    ev = _bar(probs, given, flagged, np.where(flagged, 0.1, 0.9), x, RelabelConfig(), seed=0)
    assert ev.competence < 0.9 and not ev.auto.any()


def test_each_condition_of_the_bar_is_needed() -> None:
    x, true = clusters()
    given = true.copy()
    given[:3] = 1
    flagged = np.zeros(len(given), bool)
    flagged[:3] = True
    clean_prob = np.where(flagged, 0.1, 0.9)
    unsure = _probs_for(true, 3, 0.6)  # below min_prob
    assert not _bar(unsure, given, flagged, clean_prob, x, RelabelConfig(), seed=0).auto.any()
    sure = _probs_for(true, 3, 0.97)
    strict = RelabelConfig(min_agreement=1.0, neighbours=60)  # 60 neighbours cannot all be class 0 and ...
    given_many = given.copy()
    given_many[:30] = 1  # ... half of class 0 is filed under 1: the neighbourhood no longer agrees
    flagged_many = np.zeros(len(given), bool)
    flagged_many[:30] = True
    ev = _bar(sure, given_many, flagged_many, np.where(flagged_many, 0.1, 0.9), x, strict, seed=0)
    assert not ev.auto.any()
    assert not _bar(sure, given, np.zeros_like(flagged), clean_prob, x, RelabelConfig(),
                                  seed=0).auto.any()  # never an image the mixture did not flag
