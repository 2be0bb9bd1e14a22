"""The beta mixture of dynamic bootstrapping (Arazo et al. 2019) on synthetic two-mode losses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from engine.method.beta_mixture import EPS, fit_beta_mixture


def two_modes(n_clean: int = 700, n_noisy: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Losses on [0, 3]: clean ~ 3 Beta(2, 8) (mean 0.6), noisy ~ 3 Beta(8, 2) (mean 2.4), shuffled."""
    rng = np.random.default_rng(seed)
    losses = np.r_[3 * rng.beta(2, 8, n_clean), 3 * rng.beta(8, 2, n_noisy)]
    noisy = np.r_[np.zeros(n_clean, bool), np.ones(n_noisy, bool)]
    perm = rng.permutation(len(losses))
    return losses[perm], noisy[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_the_two_modes(seed: int) -> None:
    losses, noisy = two_modes(seed=seed)
    m = fit_beta_mixture(losses, max_iter=100)
    assert not m.degenerate
    clean_mean, noisy_mean = m.means
    assert clean_mean < 0.3 < 0.7 < noisy_mean  # components ordered (clean, noisy), far apart
    # The modes sit where the data's modes are, on the normalised scale.
    assert m.normalise(np.array([3 * 1 / 8]))[0] == pytest.approx(
        (m.alphas[0] - 1) / (m.alphas[0] + m.betas[0] - 2), abs=0.1)
    assert m.weights[1] == pytest.approx(0.3, abs=0.05)
    accuracy = ((m.noisy_posterior(losses) > 0.5) == noisy).mean()
    assert accuracy > 0.97


def test_the_paper_iterations_already_separate_the_modes() -> None:
    losses, noisy = two_modes()
    m = fit_beta_mixture(losses)  # 10 EM iterations, the paper's code
    assert m.iterations <= 10
    assert ((m.noisy_posterior(losses) > 0.5) == noisy).mean() > 0.95


def test_posterior_is_ordered_by_the_loss_and_in_range() -> None:
    losses, _ = two_modes()
    m = fit_beta_mixture(losses)
    order = np.argsort(losses)
    post = m.noisy_posterior(losses)[order]
    assert np.all(np.diff(post) >= 0)  # a higher loss never looks cleaner
    assert 0.0 <= post.min() and post.max() <= 1.0
    assert post[0] < 0.05 and post[-1] > 0.95


def test_losses_outside_the_percentiles_score_as_the_window_ends() -> None:
    losses, _ = two_modes()
    m = fit_beta_mixture(losses)
    assert m.lo == pytest.approx(np.percentile(losses, 5)) and m.hi == pytest.approx(np.percentile(losses, 95))
    far = np.array([-5.0, m.lo, m.hi, 1e6])
    assert m.normalise(far).tolist() == [EPS, EPS, 1 - EPS, 1 - EPS]
    post = m.noisy_posterior(far)
    assert post[0] == post[1] and post[2] == post[3]
    # an outlier in the data does not move the fit (it is left out of it)
    assert fit_beta_mixture(np.r_[losses, 1e4]).means == pytest.approx(m.means, abs=0.02)


def test_fit_is_deterministic() -> None:
    losses, _ = two_modes(seed=4)
    a, b = fit_beta_mixture(losses), fit_beta_mixture(losses.copy())
    assert a == b
    np.testing.assert_array_equal(a.noisy_posterior(losses), b.noisy_posterior(losses))


def test_weighted_moments_match_scipy_on_one_mode() -> None:
    """With one clear mode the fitted component is that beta (method of moments = the truth, roughly)."""
    rng = np.random.default_rng(0)
    x = rng.beta(2.0, 5.0, 20_000)
    m = fit_beta_mixture(np.r_[x, 1 + 0.001 * rng.random(200)], max_iter=200, percentiles=(0.0, 100.0))
    a, b = m.alphas[0], m.betas[0]
    assert stats.beta(a, b).mean() == pytest.approx(2 / 7, abs=0.02)


@pytest.mark.parametrize("losses", [np.ones(50), np.array([0.3]), np.r_[np.zeros(95), np.ones(5)]])
def test_degenerate_losses_call_everything_clean(losses: np.ndarray) -> None:
    m = fit_beta_mixture(losses)
    assert m.degenerate
    assert np.all(m.noisy_posterior(losses) == 0.0)


def test_numerically_safe_on_extreme_losses() -> None:
    rng = np.random.default_rng(1)
    losses = np.r_[np.full(500, 1e-9), rng.exponential(1e-6, 300), rng.uniform(20, 30, 200)]
    m = fit_beta_mixture(losses, max_iter=50)
    post = m.noisy_posterior(losses)
    assert np.isfinite(post).all() and np.isfinite([*m.alphas, *m.betas, *m.weights]).all()
    assert post[-200:].min() > 0.5 > post[:500].max()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"percentiles": (95.0, 5.0)}, "percentiles"),
    ({"max_iter": 0}, "max_iter"),
])
def test_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_beta_mixture(np.arange(10.0), **kwargs)


@pytest.mark.parametrize("losses", [np.array([]), np.array([1.0, np.nan])])
def test_rejects_empty_or_non_finite_losses(losses: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_beta_mixture(losses)

