"""(b1) The clean/noisy split: a two-component Gaussian mixture on per-sample losses.

The "small-loss trick": images whose given label is right are fitted early and keep a small loss;
wrong labels keep a large one. Losses are min-max normalised per evaluation (the mixture's reg_covar
is absolute, so its scale must be fixed, as in DivideMix, Li et al. 2020), optionally averaged over the last k
evaluations to smooth epoch-to-epoch jitter, and the lower-mean component is the clean one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.mixture import GaussianMixture

from engine.config import LOSS_SCALES

_TIE_BREAK = 1e-4


@dataclass(frozen=True)
class SplitResult:
    clean_prob: np.ndarray  # (N,) float64 posterior of the clean component, strictly decreasing in the loss
    loss_norm: np.ndarray  # (N,) what the mixture saw, in [0, 1]
    flagged: np.ndarray  # (N,) bool, clean_prob < threshold
    means: tuple[float, float]  # (clean, noisy) component means over loss_norm
    stds: tuple[float, float]
    weights: tuple[float, float]
    threshold: float
    loss_threshold: float | None  # loss_norm where clean_prob first drops below threshold
    degenerate: bool  # True when the losses carry no split (fewer than two distinct values)


# What the mixture sees of each loss (SplitConfig.scale, one of LOSS_SCALES). Cross-entropy is heavily
# skewed: clean images pile up near 0 and wrong labels spread over a long tail, which two Gaussians fit
# badly, and the worse the longer a classifier trains. The square root evens the two out (measured:
# bench/results/flag_count.md).


def normalise_losses(losses: np.ndarray, scale: str = "ce") -> np.ndarray:
    """Min-max normalise each evaluation (row) and average them.

    Args:
        losses: (N,) one evaluation, or (k, N) the last k evaluations, cross-entropy (>= 0).
        scale: "ce" (the losses as they are, the paper's) or "sqrt" (their square roots, see above).
    Returns:
        (N,) float64 in [0, 1].
    """
    if scale not in LOSS_SCALES:
        raise ValueError(f"scale must be one of {', '.join(LOSS_SCALES)}, got {scale!r}")
    rows = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    if scale == "sqrt":
        rows = np.sqrt(np.maximum(rows, 0.0))
    lo = rows.min(axis=1, keepdims=True)
    span = rows.max(axis=1, keepdims=True) - lo
    normed = np.where(span > 0, (rows - lo) / np.where(span > 0, span, 1.0), 0.0)
    return normed.mean(axis=0)


def fit_gmm_split(
    loss_norm: np.ndarray,
    *,
    threshold: float = 0.5,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 5e-4,
    covariance: str = "tied",
    fit_on: np.ndarray | None = None,
) -> SplitResult:
    """Fit the 2-component mixture and return each image's probability that its label is clean.

    Parameters
    ----------
    loss_norm : ndarray of shape (N,)
        Normalised per-sample losses in [0, 1] (see `normalise_losses`).
    threshold : float
        Images with clean_prob below it are flagged as suspected mislabels.
    covariance : {"tied", "full"}
        "tied": one variance shared by both components (default). "full": one variance each, as the
        paper's code and DivideMix fit it. With a weak classifier the clean losses pile up near 0 in
        a narrow peak while the rest spreads wide; a per-component variance then makes the clean
        component hug that peak and flags most of the data (CIFAR-10 5k, 40 % noise: 3,357 of 5,000
        flagged, F1 0.70); a shared variance puts the boundary between the two means (F1 0.74), and
        costs nothing where the classifier is good (digits: F1 0.988 -> 0.989; bundled sample 0.967
        -> 0.980). With a shared variance the posterior is also monotone in the loss by construction.
        A classifier trained longer (the CPU profile's 36 epochs) crowds its clean losses tighter near 0,
        and there the per-component variance flags better: measured in engine.config.cpu_profile, which
        chooses it, and engine.train.budget.split_for_epochs, which keeps it for 30 epochs or more.

    fit_on : ndarray of bool, shape (N,), optional
        The images the mixture is fitted on (default: all); every image gets a posterior. Reviewed and
        discarded images are left out of the fit (engine.review.trusted): a person's answer is not
        evidence about what a clean loss looks like, and a relabeled image's loss against its old label
        would pull the noisy component towards the images already fixed.

    Degenerate inputs never raise: with fewer than two distinct loss values there is nothing to
    split, so every image is reported clean (clean_prob 1) and `degenerate` is set.
    """
    x = np.asarray(loss_norm, dtype=np.float64)
    fitted = x if fit_on is None else x[np.asarray(fit_on, bool)]
    if len(fitted) < 2 or np.unique(np.round(fitted, 12)).size < 2:
        return _degenerate(x, threshold)
    if covariance not in ("tied", "full"):
        raise ValueError(f"covariance must be 'tied' or 'full', got {covariance!r}")
    gmm = GaussianMixture(n_components=2, covariance_type=covariance, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                          random_state=seed)
    gmm.fit(fitted[:, None])
    clean = int(np.argmin(gmm.means_.ravel()))
    posterior = gmm.predict_proba(x[:, None])[:, clean]
    means = gmm.means_.ravel()
    # A 1e-4 share of (1 - loss) keeps clean_prob strictly decreasing in the loss: where the posterior
    # underflows to 0 (or saturates at 1) the images would otherwise tie, and the review order and
    # the AUROC would lose the ranking the losses carry (measured: AUROC 0.991 -> 0.999 on digits).
    clean_prob = (1.0 - _TIE_BREAK) * _monotone(x, posterior, float(means[clean])) + _TIE_BREAK * (1.0 - x)
    stds = np.sqrt(np.broadcast_to(np.asarray(gmm.covariances_).ravel(), (2,)))  # tied: one shared value
    order = (clean, 1 - clean)
    return SplitResult(
        clean_prob=clean_prob,
        loss_norm=x.astype(np.float32),
        flagged=clean_prob < threshold,
        means=(float(means[order[0]]), float(means[order[1]])),
        stds=(float(stds[order[0]]), float(stds[order[1]])),
        weights=(float(gmm.weights_[order[0]]), float(gmm.weights_[order[1]])),
        threshold=threshold,
        loss_threshold=_crossing(x, clean_prob, threshold),
        degenerate=False,
    )


def _monotone(x: np.ndarray, posterior: np.ndarray, clean_mean: float) -> np.ndarray:
    """Make the clean posterior non-increasing in the loss.

    Two Gaussians of unequal variance give a posterior that turns back up in the far tail of the
    wider component: a clean component wider than the noisy one would call the very highest losses
    "clean", and a wide noisy one would call the very lowest losses "noisy". A higher loss must never
    look cleaner, so below the clean mean the posterior is lifted to its value at the mean, and above
    it a running minimum is taken along increasing loss.
    """
    order = np.argsort(x, kind="stable")
    xs, ps = x[order], posterior[order]
    at_mean = ps[min(np.searchsorted(xs, clean_mean), len(xs) - 1)]
    ps = np.where(xs <= clean_mean, np.maximum(ps, at_mean), ps)
    ps = np.minimum.accumulate(ps)
    out = np.empty_like(ps)
    out[order] = ps
    return out


def _crossing(x: np.ndarray, clean_prob: np.ndarray, threshold: float) -> float | None:
    below = x[clean_prob < threshold]
    return float(below.min()) if below.size else None


def _degenerate(x: np.ndarray, threshold: float) -> SplitResult:
    n = len(x)
    return SplitResult(
        clean_prob=np.ones(n, np.float32),
        loss_norm=x.astype(np.float32),
        flagged=np.zeros(n, bool),
        means=(float(x.mean()) if n else 0.0, float(x.mean()) if n else 0.0),
        stds=(0.0, 0.0),
        weights=(1.0, 0.0),
        threshold=threshold,
        loss_threshold=None,
        degenerate=True,
    )


def suspicion(clean_prob: np.ndarray, probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Review-queue order in (0, 1]: the mean of two ranks, the mixture's doubt and the model's doubt.

    suspicion = 0.5 * rank(1 - clean_prob) / N + 0.5 * rank(1 - p_given) / N (average ranks for ties), with
    p_given the probability of the given label in `probs`: the run passes out-of-fold probabilities
    (engine.method.out_of_fold), which the classifier's memorising of wrong labels does not inflate.

    Ranks, not the raw values: the mixture's posterior is a step (most images sit near 0 or 1), so in a
    plain sum 0.5 (1 - clean_prob) + 0.5 (1 - p_given) it splits the queue in two and p_given only orders
    within each half; ranks let both order every image. Measured side by side on four finished runs,
    wrong labels per 100 in the top 10 % of the queue, plain sum -> ranks (bench/queue_order.py,
    bench/results/queue_order.md): CIFAR-10N worst 2,000 80.0 -> 83.5, worst 5,000 86.4 -> 87.4, CIFAR-10N
    aggre 2,000 32.0 -> 32.0, the bundled sample 95.0 -> 93.9; over K = 2, 5, 10 and 20 % the sum of all
    sixteen cells rises 1190 -> 1209. Also measured there and not better on every case: the out-of-fold
    probability alone, the mixture alone, a third rank for the 10 nearest neighbours' disagreement, the
    out-of-fold margin, and per-class thresholds (cleanlab's self-confidence rule) on the same runs.
    """
    n = len(given)
    if n == 0:
        return np.zeros(0, np.float32)
    p_given = probs[np.arange(n), given]
    mixture_doubt = rankdata(1.0 - np.asarray(clean_prob, dtype=np.float64)) / n
    model_doubt = rankdata(1.0 - np.asarray(p_given, dtype=np.float64)) / n
    return (0.5 * mixture_doubt + 0.5 * model_doubt).astype(np.float32)


def per_class_summary(flagged: np.ndarray, given: np.ndarray, classes: tuple[str, ...]) -> dict[str, dict]:
    """Images, flags and the estimated noise rate (flagged fraction) of each given class."""
    out = {}
    for c, name in enumerate(classes):
        members = given == c
        n, f = int(members.sum()), int(flagged[members].sum())
        out[name] = {"n": n, "flagged": f, "noise_rate": round(f / n, 4) if n else 0.0}
    return out
