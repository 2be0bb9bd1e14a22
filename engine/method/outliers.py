"""Outliers: images that belong to no class of the data set (a logo, a blank frame, a photo of the wrong
thing), to be discarded rather than relabeled.

An image's outlier score is the mean cosine distance to its k nearest neighbours in the encoder's
feature space (engine.method.neighbours), as a percentile rank in [0, 1] over the data set: 1 for the
image farthest from everything, 0 for the most typical one. A foreign image has no neighbours of its
own kind, so it sits far from all of them; the mean over k (not the distance to the nearest one) keeps
a foreign image that happens to be filed twice from looking typical. numpy/scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def knn_distance(similarity: np.ndarray) -> np.ndarray:
    """(N,) float32 mean cosine distance (1 - similarity) to each image's neighbours (NaN columns, no
    neighbour, left out); 0 with none."""
    distance = 1.0 - np.asarray(similarity, np.float32)
    real = ~np.isnan(distance)
    total = np.where(real, distance, 0.0).sum(axis=1)
    return (total / np.maximum(real.sum(axis=1), 1)).astype(np.float32)


def percentile_scores(values: np.ndarray) -> np.ndarray:
    """(N,) float64 in [0, 1]: the share of the other images whose value is lower (ties share the mean
    rank), so the largest value gets 1 and the smallest 0."""
    n = len(values)
    if n < 2:
        return np.zeros(n, np.float64)
    return (rankdata(values, method="average") - 1.0) / (n - 1)


def outlier_scores(similarity: np.ndarray) -> np.ndarray:
    """(N,) outlier score in [0, 1] from each image's neighbour similarities (N, k)."""
    return percentile_scores(knn_distance(similarity))
