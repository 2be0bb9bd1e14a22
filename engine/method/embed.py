"""The embedding map: UMAP 2-D of the encoder features (umap-learn, seeded).

Above `fit_sample` images UMAP is fitted on a seeded random sample and the rest are placed with
`transform`, which bounds the memory and time of the fit (50,000 points: 18 s against 25 s for a
full fit on 2 CPU cores). numba compiles transform on its first use (~45 s once); the compiled code is
cached on disk (NUMBA_CACHE_DIR) for later runs.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from engine.config import EmbedConfig


def umap_2d(features: np.ndarray, cfg: EmbedConfig, *, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) float32 map. Deterministic for a given seed."""
    n = len(features)
    if n < 4:  # UMAP needs a neighbourhood; a line is the honest map of 1-3 points
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)], axis=1)
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "clean-numba"))
    import umap  # heavy import (numba); only the worker pays for it

    x = _l2(features)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(cfg.n_neighbors, n - 1), min_dist=cfg.min_dist,
                        metric="euclidean", random_state=seed, low_memory=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded UMAP is single-threaded by design
        if n <= cfg.fit_sample:
            return reducer.fit_transform(x).astype(np.float32)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, cfg.fit_sample, replace=False))
        reducer.fit(x[sample])
        out = np.empty((n, 2), np.float32)
        out[sample] = reducer.embedding_
        rest = np.setdiff1d(np.arange(n), sample)
        out[rest] = reducer.transform(x[rest])
        return out


def _l2(features: np.ndarray) -> np.ndarray:
    """Unit-length features: SimCLR features live on a sphere, euclidean on them ~ cosine distance."""
    x = np.asarray(features, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
