"""The nearest images of every image in the encoder's feature space: evidence for the review cards.

"4 of 5 nearest images are labelled dog" says why an image labelled cat looks wrong. Similarity is the
cosine of the L2-normalised encoder features (as the map and SupCon use them). Exact, in square blocks:
memory stays at about `BLOCK_BYTES` whatever the number of images (50,000 x 512:
bench/results/rerank_speed.md).
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
    first); NONE fills the columns of a run with fewer than k + 1 images.

    Similarities are computed in square blocks of about BLOCK_BYTES, each pair of blocks once (the
    similarity is symmetric: a block's product serves its rows and, transposed, its columns' rows, which
    halves the matrix products that dominate the time), and merged into a running top-k per row.
    """
    x = l2_normalised(features)
    n = len(x)
    out = np.full((n, k), NONE, dtype=np.int32)
    m = min(k, n - 1)
    if m <= 0:
        return out
    size = max(m + 1, int((BLOCK_BYTES // 4) ** 0.5))
    best = np.full((n, m), -np.inf, dtype=np.float32)
    ids = np.full((n, m), n, dtype=np.int64)  # n: "none yet", after every real row in the tie-break
    for a in range(0, n, size):
        rows = x[a:a + size]
        for b in range(a, n, size):
            sims = rows @ x[b:b + size].T
            if a == b:
                np.fill_diagonal(sims, -np.inf)  # an image is not its own neighbour
            _merge(best, ids, a, sims, b)
            if a != b:  # rows of a row-major copy: partitioning a transposed view is ~15x slower
                _merge(best, ids, b, np.ascontiguousarray(sims.T), a)
    out[:, :m] = ids
    return out


def _merge(best: np.ndarray, ids: np.ndarray, row0: int, sims: np.ndarray, col0: int) -> None:
    """Fold a block of similarities (rows row0.., columns col0..) into the running top-m of its rows: the
    block's own top-m first (on the big block, ties by column), then the 2m candidates per row."""
    r = slice(row0, row0 + sims.shape[0])
    m = min(best.shape[1], sims.shape[1])
    columns = np.broadcast_to(np.arange(col0, col0 + sims.shape[1]), sims.shape)
    top = _top(sims, columns, m)
    values = np.concatenate([best[r], np.take_along_axis(sims, top, axis=1)], axis=1)
    keys = np.concatenate([ids[r], top + col0], axis=1)
    picked = _top(values, keys, best.shape[1])
    best[r] = np.take_along_axis(values, picked, axis=1)
    ids[r] = np.take_along_axis(keys, picked, axis=1)


def _top(values: np.ndarray, keys: np.ndarray, m: int) -> np.ndarray:
    """(rows, m) positions of the m largest values of each row, largest first, ties by the smaller key.

    The m-th largest value of each row (one partition, no index array) bounds the candidates; only those few
    are sorted: about 3x faster than an argpartition of every row.
    """
    w = values.shape[1]
    bound = np.partition(values, w - m, axis=1)[:, w - m]
    rows, cols = np.nonzero(values >= bound[:, None])  # m per row, more only where values tie at the bound
    order = np.lexsort((keys[rows, cols], -values[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(values.shape[0]))
    return cols[first[:, None] + np.arange(m)]


def label_votes(neighbours: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) share of each image's neighbours (NONE columns left out) that carry each label."""
    n, k = neighbours.shape
    votes = np.zeros((n, num_classes), np.float32)
    real = neighbours != NONE
    if k == 0 or not real.any():
        return votes
    rows = np.broadcast_to(np.arange(n)[:, None], neighbours.shape)[real]
    np.add.at(votes, (rows, labels[neighbours[real]]), 1.0)
    return votes / np.maximum(real.sum(axis=1, keepdims=True), 1)


def similarities(features: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(N, k) float32 cosine similarity of each image to each of its `neighbours` (nearest_neighbours' ids);
    NaN in NONE columns. A row-wise dot product of the found pairs: no second search."""
    x = l2_normalised(features)
    real = neighbours != NONE
    out = np.full(neighbours.shape, np.nan, dtype=np.float32)
    if real.any():
        rows = np.broadcast_to(np.arange(len(x))[:, None], neighbours.shape)[real]
        out[real] = np.einsum("ij,ij->i", x[rows], x[neighbours[real]])
    return out
