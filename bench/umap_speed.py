#!/usr/bin/env python3
"""Time of the embedding map (engine.method.embed.umap_2d) at growing sizes, on this machine.

    .venv/bin/python bench/umap_speed.py                  # 5k, 20k, 50k points; bench/results/umap_speed.md
    .venv/bin/python bench/umap_speed.py --sizes 1000,50000

Features are 512-d like the encoder's: 10 Gaussian clusters on the sphere (real encoder features of
a labelled data set are clustered too). Above EmbedConfig.fit_sample points UMAP is fitted on a
sample and transforms the rest; the table says which path each size took. The first call pays the
numba compilation (cached on disk afterwards), so a warm-up map of 1,000 points runs first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_lines  # noqa: E402
from engine.config import EmbedConfig  # noqa: E402
from engine.method.embed import umap_2d  # noqa: E402


def clustered_features(n: int, *, dim: int = 512, clusters: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5000,20000,50000")
    p.add_argument("--fit-sample", type=int, default=None, help="override EmbedConfig.fit_sample")
    a = p.parse_args(argv)
    cfg = EmbedConfig() if a.fit_sample is None else EmbedConfig(fit_sample=a.fit_sample)
    t0 = time.perf_counter()
    umap_2d(clustered_features(1000), cfg)
    umap_2d(clustered_features(5000), cfg)  # the nearest-neighbour-descent path compiles above ~4,000 points
    warm = time.perf_counter() - t0
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        x = clustered_features(n)
        t0 = time.perf_counter()
        out = umap_2d(x, cfg)
        seconds = time.perf_counter() - t0
        assert out.shape == (n, 2) and np.isfinite(out).all()
        path = "fit all" if n <= cfg.fit_sample else f"fit {cfg.fit_sample:,} + transform {n - cfg.fit_sample:,}"
        rows.append(f"| {n:,} | {path} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    table = ["| points | path | seconds |", "|---:|---|---:|", *rows]
    report = ["# Embedding map (UMAP) time", "", *machine_lines(),
              f"- 512-d clustered features; n_neighbors {cfg.n_neighbors}, min_dist {cfg.min_dist}, "
              f"fit_sample {cfg.fit_sample:,}; warm-up (1,000 + 5,000 points incl. numba load/compile): {warm:.1f} s",
              f"- command: `python bench/umap_speed.py{'' if a.fit_sample is None else f' --fit-sample {a.fit_sample}'}`",
              "", *table, ""]
    out_path = RESULTS / ("umap_speed.md" if a.fit_sample is None else f"umap_speed_fit{a.fit_sample}.md")
    out_path.write_text("\n".join(report), encoding="utf-8")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
