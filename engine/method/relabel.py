"""When may a label change without a person looking? The bar behind `export --auto-relabel confident`.

A flagged image's suggestion is only as good as the classifier that made it. Measured on real data, a
classifier that is right about half the time (CIFAR-10 from scratch on two CPU cores) is wrong about most
of the images where it disagrees with the given label, even where it is 98 % sure of itself (CIFAR-10N
worst, 2,000 images: 74 % of those suggestions right). Its own probability is no bar. So an automatic
change needs three things, each measured by the worker:

1. competence: the run's encoder must be good enough that a simple head on its features, trained on
   the other folds, agrees with the given labels of the images the mixture calls clean at least
   `min_competence` of the time. This is out-of-sample: it says how often this model is right on images
   it did not train the head on. Below the bar nothing changes by itself, whatever the probabilities say.
2. the classifier is sure of the suggestion (`min_prob`);
3. the image's nearest neighbours in feature space mostly carry the suggested label
   (`min_agreement`): evidence that does not come from the classifier's output.

The bar's defaults are set from the benchmark cases (bench/quality.py --case real) so that the changes
it lets through are right at least 95 % of the time on each case; the measured precision per case is in
bench/results/ and the README.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from engine.config import RelabelConfig
from engine.method.neighbours import l2_normalised, label_votes

# Competence is estimated on at most this many clean images: the estimate's error at 5,000 is ~0.7 points,
# and the cost of the folds grows with the count.
_COMPETENCE_SAMPLE = 5000
_FOLDS = 5


@dataclass(frozen=True)
class RelabelEvidence:
    competence: float | None  # out-of-fold agreement with the clean-looking given labels; None: not measurable
    agreement: np.ndarray  # (N,) share of the k nearest neighbours labelled as the suggestion
    auto: np.ndarray  # (N,) bool: the suggestion may replace the given label without a review


def competence(features: np.ndarray, given: np.ndarray, clean: np.ndarray, *, seed: int) -> float | None:
    """Out-of-fold accuracy of a logistic-regression head on L2-normalised features, against the given
    labels of the images in `clean` (a sample of them). None when there are too few to tell."""
    rows = np.flatnonzero(clean)
    rng = np.random.default_rng(seed)
    if len(rows) > _COMPETENCE_SAMPLE:
        rows = np.sort(rng.choice(rows, _COMPETENCE_SAMPLE, replace=False))
    y = given[rows]
    counts = np.bincount(y)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < _FOLDS:
        return None
    x = l2_normalised(features[rows])
    right = 0
    for fit, held in StratifiedKFold(_FOLDS, shuffle=True, random_state=seed).split(x, y):
        head = LogisticRegression(max_iter=300).fit(x[fit], y[fit])
        right += int((head.predict(x[held]) == y[held]).sum())
    return right / len(rows)


def confident_relabels(
    probs: np.ndarray,
    given: np.ndarray,
    flagged: np.ndarray,
    clean_prob: np.ndarray,
    features: np.ndarray,
    neighbours: np.ndarray,
    cfg: RelabelConfig,
    *,
    seed: int,
) -> RelabelEvidence:
    """Which flagged images may take their suggestion (argmax of `probs`) without a review.

    Args:
        probs: (N, C) classifier probabilities; given: (N,) given label indices; flagged: (N,) bool;
        clean_prob: (N,) the mixture's clean probability; features: (N, D) encoder features;
        neighbours: (N, >= cfg.neighbours) nearest images, most similar first (engine.method.neighbours).
    """
    suggested = probs.argmax(axis=1)
    rows = np.arange(len(given))
    agreement = label_votes(neighbours[:, :cfg.neighbours], given, probs.shape[1])[rows, suggested]
    skill = competence(features, given, clean_prob >= 0.5, seed=seed)
    candidate = flagged & (suggested != given) & (probs[rows, suggested] >= cfg.min_prob) & (
        agreement >= cfg.min_agreement)
    able = skill is not None and skill >= cfg.min_competence
    return RelabelEvidence(skill, agreement.astype(np.float32), candidate & able)
