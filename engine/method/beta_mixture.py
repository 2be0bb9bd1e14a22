"""A two-component beta mixture on per-sample losses: each image's probability that its label is noisy.

Dynamic bootstrapping (Arazo et al. 2019, "Unsupervised label noise modeling and loss correction",
https://arxiv.org/abs/1904.11238) models the cross-entropy losses of the training images as a mixture of
two beta distributions, one for the clean labels (low losses) and one for the noisy ones (high losses),
and fits it with EM after every epoch. Compared with the Gaussian mixture of the split (engine.method.
selection) a beta density lives on [0, 1] and can be skewed, which fits the piled-up small losses of
the clean images better.

The fit follows the paper's recipe:
    - losses outside the [lo, hi] percentiles (5 and 95) are left out of the fit, so a few extreme
      losses do not stretch the scale; all losses are then mapped to (x - p_lo) / (p_hi - p_lo) and
      clipped to [eps, 1 - eps], where both beta densities are finite;
    - EM: the E-step gives each image its responsibilities, the M-step fits each component by the
      weighted method of moments (mean m and variance v of the responsibilities' weighting give
      alpha = m (m (1 - m) / v - 1), beta = alpha (1 - m) / m) and the mixing weights by the mean
      responsibilities; the start is deterministic (a low-loss and a high-loss component);
    - the noisy component is the one of higher mean, and its posterior is made non-decreasing in the
      loss: a higher loss never looks cleaner (the paper's code flattens the top of its lookup table
      for the same reason, where the clean density's tail would otherwise take over again; here the
      bottom is flattened too, below the clean mean).

No randomness anywhere: the same losses give the same mixture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, logsumexp

EPS = 1e-4  # clip of the normalised losses and of the responsibilities (the paper's code: 1e-4)
_MIN_VARIANCE = 1e-8  # a component whose images all share one value must not divide by zero
_MAX_SHAPE = 1e4  # beta shapes beyond this are a spike; capped so that the log-densities stay finite
_MIN_SHAPE = 1e-2


@dataclass(frozen=True)
class BetaMixture:
    """A fitted mixture; components ordered (clean, noisy) = (lower mean, higher mean)."""

    alphas: tuple[float, float]
    betas: tuple[float, float]
    weights: tuple[float, float]
    lo: float  # the loss mapped to eps (the lower percentile of the fitted losses)
    hi: float  # the loss mapped to 1 - eps (the upper percentile)
    iterations: int  # EM iterations run
    degenerate: bool  # the losses carry no split (fewer than two distinct values in the percentile window)

    @property
    def means(self) -> tuple[float, float]:
        return (self.alphas[0] / (self.alphas[0] + self.betas[0]), self.alphas[1] / (self.alphas[1] + self.betas[1]))

    def normalise(self, losses: np.ndarray) -> np.ndarray:
        """Losses mapped to the fitted scale and clipped to [eps, 1 - eps]. Shape: (N,) float64."""
        x = (np.asarray(losses, dtype=np.float64) - self.lo) / max(self.hi - self.lo, 1e-12)
        return np.clip(x, EPS, 1.0 - EPS)

    def noisy_posterior(self, losses: np.ndarray) -> np.ndarray:
        """Each loss's posterior of the noisy component, non-decreasing in the loss. Shape (N,), in [0, 1].

        A degenerate mixture calls every image clean (0).
        """
        losses = np.asarray(losses, dtype=np.float64)
        if self.degenerate:
            return np.zeros(losses.shape, np.float64)
        x = self.normalise(losses)
        post = _responsibilities(x, np.array(self.alphas), np.array(self.betas), np.array(self.weights))[1]
        # Both densities vanish (or blow up) at the ends of [0, 1], where their ratio says little: below
        # the clean mean the posterior is capped at its value there, above it a running maximum is taken.
        at_clean_mean = _responsibilities(np.array([self.means[0]]), np.array(self.alphas), np.array(self.betas),
                                          np.array(self.weights))[1, 0]
        post = np.where(x <= self.means[0], np.minimum(post, at_clean_mean), post)
        order = np.argsort(x, kind="stable")
        out = np.empty_like(post)
        out[order] = np.maximum.accumulate(post[order])
        return out


def _log_beta_pdf(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log Beta(x; a_k, b_k) for both components. Shape: (2, N)."""
    return (a[:, None] - 1) * np.log(x)[None] + (b[:, None] - 1) * np.log1p(-x)[None] - betaln(a, b)[:, None]


def _responsibilities(x: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Posterior of each component for each x, each at least EPS before renormalising. Shape: (2, N)."""
    log_joint = _log_beta_pdf(x, a, b) + np.log(np.maximum(w, 1e-300))[:, None]
    r = np.exp(log_joint - logsumexp(log_joint, axis=0, keepdims=True))
    r = np.maximum(r, EPS)
    return r / r.sum(axis=0, keepdims=True)


def _weighted_moments(x: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """(alpha, beta) of the beta distribution with the r-weighted mean and variance of x."""
    mean = float(np.sum(r * x) / np.sum(r))
    var = max(float(np.sum(r * (x - mean) ** 2) / np.sum(r)), _MIN_VARIANCE)
    var = min(var, mean * (1 - mean) * (1 - 1e-6))  # a beta's variance is below m (1 - m)
    alpha = mean * (mean * (1 - mean) / var - 1)
    beta = alpha * (1 - mean) / mean
    return float(np.clip(alpha, _MIN_SHAPE, _MAX_SHAPE)), float(np.clip(beta, _MIN_SHAPE, _MAX_SHAPE))


def fit_beta_mixture(
    losses: np.ndarray,
    *,
    max_iter: int = 10,
    tol: float = 1e-6,
    percentiles: tuple[float, float] = (5.0, 95.0),
) -> BetaMixture:
    """Fit the two-component beta mixture to per-sample losses.

    Args:
        losses: (N,) per-sample losses (any non-negative scale, e.g. cross-entropy).
        max_iter: EM iterations at most (the paper's code runs 10).
        tol: stop earlier once the mean log-likelihood improves by less than this.
        percentiles: (lo, hi) percentiles of the losses that map to eps and 1 - eps; losses outside
            them are left out of the fit (and score as the window's ends).

    Returns:
        The mixture, components ordered (clean, noisy). Never raises on degenerate losses: with fewer
        than two distinct values inside the window the mixture is `degenerate` and calls every image clean.
    """
    lo_pct, hi_pct = percentiles
    if not 0.0 <= lo_pct < hi_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    values = np.asarray(losses, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("the losses must be a non-empty array of finite numbers")
    lo, hi = (float(v) for v in np.percentile(values, [lo_pct, hi_pct]))
    window = values[(values >= lo) & (values <= hi)]
    if hi - lo <= 1e-12 or np.unique(window).size < 2:
        return BetaMixture((1.0, 1.0), (1.0, 1.0), (1.0, 0.0), lo, hi, 0, degenerate=True)
    x = np.clip((window - lo) / (hi - lo), EPS, 1.0 - EPS)
    # Deterministic start: Beta(1, 2) (mean 1/3, the clean side) and Beta(2, 1) (mean 2/3, the noisy side).
    a, b, w = np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([0.5, 0.5])
    previous, iterations = -np.inf, 0
    while iterations < max_iter:
        iterations += 1
        r = _responsibilities(x, a, b, w)
        for k in range(2):
            a[k], b[k] = _weighted_moments(x, r[k])
        w = r.sum(axis=1) / r.sum()
        log_joint = _log_beta_pdf(x, a, b) + np.log(np.maximum(w, 1e-300))[:, None]
        likelihood = float(np.mean(logsumexp(log_joint, axis=0)))
        if abs(likelihood - previous) < tol:
            break
        previous = likelihood
    order = np.argsort(a / (a + b), kind="stable")  # (clean, noisy)
    return BetaMixture(
        alphas=(float(a[order[0]]), float(a[order[1]])),
        betas=(float(b[order[0]]), float(b[order[1]])),
        weights=(float(w[order[0]]), float(w[order[1]])),
        lo=lo,
        hi=hi,
        iterations=iterations,
        degenerate=False,
    )
