"""The GMM clean/noisy split (b1) and the review-queue suspicion score."""

from __future__ import annotations

import numpy as np
import pytest

from engine.method.selection import fit_gmm_split, normalise_losses, per_class_summary, suspicion


def bimodal(n_clean: int = 600, n_noisy: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.gamma(2.0, 0.08, n_clean)  # small losses
    noisy = rng.normal(2.5, 0.5, n_noisy).clip(0.5)  # large losses
    losses = np.concatenate([clean, noisy])
    is_clean = np.r_[np.ones(n_clean, bool), np.zeros(n_noisy, bool)]
    perm = rng.permutation(len(losses))
    return losses[perm], is_clean[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_clean_set_with_high_precision(seed: int) -> None:
    losses, is_clean = bimodal(seed=seed)
    split = fit_gmm_split(normalise_losses(losses), seed=seed)
    selected = ~split.flagged
    precision = (selected & is_clean).sum() / selected.sum()
    recall = (selected & is_clean).sum() / is_clean.sum()
    assert precision > 0.9 and recall > 0.9
    assert split.means[0] < split.means[1]  # component 0 reported is the clean (lower-mean) one
    assert not split.degenerate


def test_clean_prob_never_increases_with_loss() -> None:
    losses, _ = bimodal()
    split = fit_gmm_split(normalise_losses(losses))
    order = np.argsort(split.loss_norm)
    assert np.all(np.diff(split.clean_prob[order]) < 0)  # strictly: no ties that would hide the ranking
    assert split.loss_threshold is not None
    assert np.all(split.flagged == (split.loss_norm >= split.loss_threshold))


def test_wide_clean_component_does_not_call_the_highest_losses_clean() -> None:
    rng = np.random.default_rng(3)
    # clean losses widely spread, noisy tightly packed: a raw posterior turns back up in the far tail
    losses = np.r_[rng.normal(0.3, 0.25, 800).clip(0), rng.normal(1.2, 0.05, 200), [3.0, 3.2]]
    split = fit_gmm_split(normalise_losses(losses), covariance="full")
    assert split.flagged[-2:].all()


def test_averaging_over_last_evaluations_uses_each_row_normalised() -> None:
    a = np.array([0.0, 1.0, 2.0])
    b = np.array([0.0, 10.0, 20.0])
    np.testing.assert_allclose(normalise_losses(np.stack([a, b])), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("losses", [np.full(10, 0.7), np.array([0.3]), np.array([]), np.array([1.0, 1.0, 1.0])])
def test_degenerate_inputs_return_all_clean(losses: np.ndarray) -> None:
    split = fit_gmm_split(normalise_losses(losses) if losses.size else losses)
    assert split.degenerate
    assert len(split.clean_prob) == len(losses)
    assert (split.clean_prob == 1.0).all() and not split.flagged.any()


def test_two_distinct_values_split_cleanly() -> None:
    losses = np.r_[np.zeros(50), np.ones(5)]
    split = fit_gmm_split(losses)
    assert split.flagged[-5:].all() and not split.flagged[:50].any()


def test_seeded_fit_is_reproducible() -> None:
    losses, _ = bimodal(seed=5)
    a = fit_gmm_split(normalise_losses(losses), seed=4)
    b = fit_gmm_split(normalise_losses(losses), seed=4)
    np.testing.assert_array_equal(a.clean_prob, b.clean_prob)


def test_threshold_is_configurable() -> None:
    losses, _ = bimodal(seed=6)
    loose = fit_gmm_split(normalise_losses(losses), threshold=0.1)
    strict = fit_gmm_split(normalise_losses(losses), threshold=0.9)
    assert loose.flagged.sum() <= strict.flagged.sum()


def test_suspicion_orders_confident_disagreement_first() -> None:
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.02, 0.98], [0.1, 0.9]])
    given = np.array([0, 0, 0, 1])
    clean_prob = np.array([0.99, 0.4, 0.01, 0.95])
    s = suspicion(clean_prob, probs, given)
    assert s.argmax() == 2 and s.argmin() == 0
    # ranks of 1 - clean_prob: 1, 3, 4, 2; of 1 - p_given (0.1, 0.5, 0.98, 0.1): 1.5, 3, 4, 1.5 — over 4 images
    np.testing.assert_allclose(s, [0.3125, 0.75, 1.0, 0.4375], atol=1e-6)
    assert ((0 < s) & (s <= 1)).all() and suspicion(clean_prob[:0], probs[:0], given[:0]).shape == (0,)


def test_suspicion_lets_the_model_order_images_the_mixture_calls_equally_clean() -> None:
    """A saturated posterior (1.0 for both) must not hide that the model doubts one label far more."""
    probs = np.array([[0.95, 0.05], [0.30, 0.70], [0.6, 0.4], [0.9, 0.1]])
    given = np.array([0, 0, 0, 0])
    s = suspicion(np.array([1.0, 1.0, 0.2, 0.3]), probs, given)
    assert s[1] > s[0] and s[2] > s[3]


def test_per_class_summary_counts_flags() -> None:
    out = per_class_summary(np.array([1, 0, 1, 1], bool), np.array([0, 0, 1, 1]), ("a", "b"))
    assert out == {"a": {"n": 2, "flagged": 1, "noise_rate": 0.5}, "b": {"n": 2, "flagged": 2, "noise_rate": 1.0}}


def test_clean_prob_keeps_the_full_ranking_of_the_losses() -> None:
    from sklearn.metrics import roc_auc_score

    losses, is_clean = bimodal(seed=8)
    split = fit_gmm_split(normalise_losses(losses))
    assert roc_auc_score(~is_clean, 1 - split.clean_prob) == pytest.approx(roc_auc_score(~is_clean, losses))


@pytest.mark.parametrize("covariance", ["tied", "full"])
def test_both_covariance_models_split_a_clear_case(covariance: str) -> None:
    losses, is_clean = bimodal(seed=11)
    split = fit_gmm_split(normalise_losses(losses), covariance=covariance)
    assert ((~split.flagged) == is_clean).mean() > 0.95
    assert split.stds[0] > 0 and split.stds[1] > 0
    if covariance == "tied":
        assert split.stds[0] == split.stds[1]


def test_shared_variance_does_not_flag_the_broad_clean_bulk() -> None:
    """Weak-classifier shape: clean losses in a narrow peak near 0 plus a long shoulder; the noisy ones
    broad and higher. A per-component variance lets the clean component hug the peak alone."""
    rng = np.random.default_rng(12)
    clean = np.r_[rng.exponential(0.05, 1500), rng.uniform(0.1, 1.2, 1500)]
    noisy = rng.normal(1.6, 0.5, 2000).clip(0.2)
    losses, is_clean = np.r_[clean, noisy], np.r_[np.ones(3000, bool), np.zeros(2000, bool)]
    tied = fit_gmm_split(normalise_losses(losses), covariance="tied")
    full = fit_gmm_split(normalise_losses(losses), covariance="full")
    assert tied.flagged.sum() < full.flagged.sum()
    assert (tied.flagged & ~is_clean).sum() / tied.flagged.sum() > (full.flagged & ~is_clean).sum() / full.flagged.sum()


def test_the_square_root_scale_normalises_the_roots_and_keeps_the_order() -> None:
    losses = np.array([[0.0, 0.25, 1.0, 4.0], [0.0, 1.0, 4.0, 16.0]])
    roots = normalise_losses(losses, "sqrt")
    np.testing.assert_allclose(roots, [0.0, 0.25, 0.5, 1.0])  # roots [0, .5, 1, 2] and [0, 1, 2, 4], each min-max
    assert list(np.argsort(roots)) == list(np.argsort(normalise_losses(losses)))
    with pytest.raises(ValueError, match="scale must be one of ce, sqrt"):
        normalise_losses(losses, "log")


def test_on_skewed_losses_the_square_root_finds_the_wrong_labels_that_the_raw_losses_miss() -> None:
    # A long-trained classifier: clean images near 0, wrong labels a wide tail (the shape of CIFAR-10N
    # worst after 92 + 46 epochs). The shared-variance mixture on raw losses puts its boundary far out.
    rng = np.random.default_rng(0)
    clean, wrong = rng.exponential(0.05, 3000), rng.gamma(2.0, 1.2, 2000)
    losses = np.r_[clean, wrong]
    truth = np.r_[np.zeros(3000, bool), np.ones(2000, bool)]
    raw = fit_gmm_split(normalise_losses(losses)).flagged
    root = fit_gmm_split(normalise_losses(losses, "sqrt")).flagged
    assert (root & truth).sum() > 2 * (raw & truth).sum()  # 1,558 of 2,000 against 636
    assert abs(root.sum() - truth.sum()) < abs(raw.sum() - truth.sum()) and (root & ~truth).sum() < 50
