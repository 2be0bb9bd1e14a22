"""Nearest neighbours in the encoder's feature space (cosine), for evidence that does not come from the
classifier's own output: does the neighbourhood of an image carry its given label, or the suggested one?

Hand-written in numpy blocks rather than scikit-learn's NearestNeighbors: on L2-normalised features the
cosine neighbours are one matrix product per block, and blocks keep memory bounded (1,024 rows x 50,000
images = 200 MB) where a brute-force tree query would build the whole distance matrix.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1024


def l2_normalise(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(features: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) int32 of each image's k most similar other images, most similar first.

    Args:
        features: (N, D) encoder features (any scale: normalised here).
        k: neighbours per image; capped at N - 1.
    """
    x = l2_normalise(features)
    n = len(x)
    k = max(0, min(k, n - 1))
    out = np.zeros((n, k), np.int32)
    if k == 0:
        return out
    for start in range(0, n, _BLOCK):
        sim = x[start:start + _BLOCK] @ x.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf  # never one's own neighbour
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[start:start + len(sim)] = np.take_along_axis(part, order, axis=1)
    return out


def label_votes(neighbours: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) share of each image's neighbours that carry each label."""
    n, k = neighbours.shape
    votes = np.zeros((n, num_classes), np.float32)
    if k == 0:
        return votes
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[neighbours].ravel()), 1.0)
    return votes / k
