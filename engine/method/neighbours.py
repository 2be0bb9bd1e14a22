"""The nearest images of every image in the encoder's feature space: evidence for the review cards.

"4 of 5 nearest images are labelled dog" says why an image labelled cat looks wrong. Similarity is the
cosine of the L2-normalised encoder features (as the map and SupCon use them). Exact, in blocks of rows:
each block's similarities to every image are one matrix product, so memory stays at about
`BLOCK_BYTES` whatever the number of images (50,000 x 512: bench/results/rerank_speed.md).
NumPy only; the worker writes RUN/neighbours.npy at the end of the split (and of the refresh).
"""

from __future__ import annotations

import numpy as np

K = 5  # neighbours per image (the column count of neighbours.npy)
BLOCK_BYTES = 64 << 20  # similarities held at once
NONE = -1  # no neighbour: a run of K images or fewer


def l2_normalised(features: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (a zero row stays zero)."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(features: np.ndarray, k: int = K) -> np.ndarray:
    """(N, k) int32: for every row the k other rows most similar to it, most similar first (ties: lower row
    first); NONE fills the columns of a run with fewer than k + 1 images."""
    x = l2_normalised(features)
    n = len(x)
    out = np.full((n, k), NONE, dtype=np.int32)
    m = min(k, n - 1)
    if m <= 0:
        return out
    xt = np.ascontiguousarray(x.T)  # the product is a little faster with a contiguous right-hand side
    block = max(1, BLOCK_BYTES // (4 * n))
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = x[start:stop] @ xt
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # an image is not its own neighbour
        out[start:stop, :m] = _top(sims, m)
    return out


def _top(sims: np.ndarray, m: int) -> np.ndarray:
    """(rows, m) columns of the m largest values of each row, largest first, ties by column.

    The m-th largest value of each row (one partition, no index array) bounds the candidates; only those few
    are sorted. About 3x faster than an argpartition of every row, which dominated the time after the product.
    """
    n = sims.shape[1]
    bound = np.partition(sims, n - m, axis=1)[:, n - m]
    rows, cols = np.nonzero(sims >= bound[:, None])  # m per row, more only where values tie at the bound
    order = np.lexsort((cols, -sims[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(sims.shape[0]))
    return cols[first[:, None] + np.arange(m)].astype(np.int32)
