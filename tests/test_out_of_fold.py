"""Out-of-fold probabilities for the review order (engine.method.out_of_fold)."""

from __future__ import annotations

import numpy as np

from engine.method.out_of_fold import FOLDS, out_of_fold_probs


def clusters(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16) * 4
    labels = np.repeat(np.arange(3), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), 16))).astype(np.float32), labels


def test_a_wrong_label_gets_a_low_probability_from_heads_that_never_saw_it():
    x, true = clusters()
    given = true.copy()
    given[[0, 1, 2, 50]] = [1, 2, 1, 0]  # four wrong labels in clean clusters
    p = out_of_fold_probs(x, given, 3, seed=0)
    assert p.shape == (120, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    p_given = p[np.arange(120), given]
    wrong = np.zeros(120, bool)
    wrong[[0, 1, 2, 50]] = True
    assert p_given[wrong].max() < 0.2 and np.median(p_given[~wrong]) > 0.8
    assert (p.argmax(1)[wrong] == true[wrong]).all()  # and the true class is the one it believes


def test_it_is_deterministic_and_discarded_images_still_get_probabilities():
    x, labels = clusters()
    trains = np.ones(120, bool)
    trains[[5, 60]] = False
    a = out_of_fold_probs(x, labels, 3, trains=trains, seed=3)
    b = out_of_fold_probs(x, labels, 3, trains=trains, seed=3)
    assert np.array_equal(a, b) and np.allclose(a[[5, 60]].sum(axis=1), 1.0, atol=1e-5)


def test_too_few_images_of_a_class_to_fold_gives_none():
    x, labels = clusters(n_per=FOLDS - 1)
    assert out_of_fold_probs(x, labels, 3) is None
    assert out_of_fold_probs(x[:10], np.zeros(10, int), 3) is None  # one class: nothing to tell apart


def test_a_class_missing_from_the_data_keeps_its_column_at_zero():
    x, labels = clusters()
    p = out_of_fold_probs(x, labels, 5)
    assert p.shape == (120, 5) and (p[:, 3:] == 0).all()
