#!/usr/bin/env python3
"""Time of the review loop's worker steps on 50,000 synthetic 512-d features, on this machine:

* `python -m engine rerank RUN` end to end (process start, reading, the refit, writing rerank.csv), and
  the refit alone in this process (engine.method.rerank.rerank_run), with 200 review decisions;
* the 5 nearest images of every image (engine.method.neighbours), which the split writes.

    .venv/bin/python bench/rerank_speed.py                 # 50,000 images; bench/results/rerank_speed.md
    .venv/bin/python bench/rerank_speed.py --images 5000

The run folder is synthetic (samples.csv, predictions.npz, source.json, decisions.sqlite): 10 classes of
clustered features on the sphere, 20 % of the given labels wrong, the wrong ones flagged with a low clean
probability. Also reported: how often the re-ranked suggestion is the true class of the flagged images
nobody reviewed, before and after (a sanity check of the refit, not a quality benchmark).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_lines  # noqa: E402
from engine.method.neighbours import nearest_neighbours  # noqa: E402
from engine.method.rerank import MAX_ROWS, rerank_run  # noqa: E402
from engine.review.decisions import DecisionStore  # noqa: E402
from engine.runs.atomic import atomic_write_json  # noqa: E402
from engine.runs.rundir import RunDir  # noqa: E402

CLASSES = tuple(f"class_{c}" for c in range(10))


def synthetic_run(folder: Path, n: int, *, dim: int = 512, noise: float = 0.2, decisions: int = 200,
                  seed: int = 0) -> tuple[RunDir, np.ndarray]:
    """A run folder with what `rerank` reads; returns it and the true labels."""
    rng = np.random.default_rng(seed)
    run = RunDir(folder)
    run.path.mkdir(parents=True, exist_ok=True)
    c = len(CLASSES)
    true = rng.integers(0, c, n)
    centres = rng.normal(size=(c, dim))
    features = (centres[true] + 2.0 * rng.normal(size=(n, dim))).astype(np.float32)
    wrong = rng.random(n) < noise
    given = np.where(wrong, (true + rng.integers(1, c, n)) % c, true)
    clean_prob = np.where(wrong, rng.uniform(0.0, 0.45, n), rng.uniform(0.55, 1.0, n))
    # the phase-(a) classifier: right for most images, but it learnt a third of the wrong labels too
    probs = rng.dirichlet(np.ones(c), n).astype(np.float32) * 0.4
    memorised = wrong & (rng.random(n) < 1 / 3)
    probs[np.arange(n), np.where(memorised, given, true)] += 0.6
    suggested = probs.argmax(1)
    names = np.asarray(CLASSES, dtype=object)
    samples = pd.DataFrame({
        "index": np.arange(n), "path": [f"{names[g]}/img_{i:06d}.png" for i, g in enumerate(given)],
        "given_label": names[given], "clean_prob": clean_prob.round(6), "flagged": (clean_prob < 0.5).astype(int),
        "suggested_label": names[suggested], "suggested_prob": probs[np.arange(n), suggested].round(6),
        "suspicion": (0.5 * (1 - clean_prob) + 0.5 * (1 - probs[np.arange(n), given])).round(6),
    })
    samples.to_csv(run.samples, index=False)
    np.savez(run.predictions, probs=probs, features=features, losses=np.zeros((1, n), np.float32))
    atomic_write_json(run.source, {"classes": list(CLASSES)})
    order = samples[samples["flagged"] == 1].sort_values("suspicion", ascending=False).index[:decisions]
    store = DecisionStore(run.decisions)
    for i in order:
        label = names[true[i]]
        store.decide([samples["path"][i]], "keep" if true[i] == given[i] else "relabel", label, source="bench")
    return run, true


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--decisions", type=int, default=200)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        run, true = synthetic_run(Path(tmp) / "run", a.images, decisions=a.decisions)
        t0, c0 = time.perf_counter(), _children_cpu()
        r = subprocess.run([sys.executable, "-m", "engine", "rerank", str(run.path)], cwd=ROOT, capture_output=True,
                           text=True, check=False)
        command_s, command_cpu = time.perf_counter() - t0, _children_cpu() - c0
        if r.returncode != 0:
            raise SystemExit(f"rerank failed: {r.stderr[-2000:]}")
        t0, c0 = time.perf_counter(), time.process_time()
        meta = rerank_run(run.path)
        refit_s, refit_cpu = time.perf_counter() - t0, time.process_time() - c0
        samples = pd.read_csv(run.samples)
        reranked = pd.read_csv(run.rerank)
        names = np.asarray(CLASSES, dtype=object)
        rest = ((samples["flagged"] == 1) & (reranked["decision_action"].isna())).to_numpy()
        before = float((samples["suggested_label"].to_numpy()[rest] == names[true[rest]]).mean())
        after = float((reranked["suggested_label"].to_numpy()[rest] == names[true[rest]]).mean())
        with np.load(run.predictions) as z:
            features = z["features"]
        t0, c0 = time.perf_counter(), time.process_time()
        neighbours = nearest_neighbours(features)
        neighbours_s, neighbours_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert neighbours.shape == (a.images, 5)
    rows = [f"| `python -m engine rerank RUN` (process start, read, refit, write) | {command_s:.1f} | {command_cpu:.1f} |",
            f"| the refit alone, in process (`rerank_run`; {meta['iterations']} L-BFGS iterations) | {refit_s:.1f} "
            f"| {refit_cpu:.1f} |",
            f"| 5 nearest images of every image (`nearest_neighbours`, exact, in blocks) | {neighbours_s:.1f} "
            f"| {neighbours_cpu:.1f} |"]
    for row in rows:
        print(row, flush=True)
    report = ["# Review loop: re-ranking and nearest images", "", *machine_lines(),
              f"- {a.images:,} images, 512-d features, 10 classes, 20 % wrong labels, {a.decisions} review "
              f"decisions; the head trains on at most {MAX_ROWS:,} rows (all reviewed + a weighted sample)",
              f"- command: `python bench/rerank_speed.py{'' if a.images == 50_000 else f' --images {a.images}'}`",
              f"- suggestion right on the unreviewed flagged images: {before:.3f} before, {after:.3f} after "
              "re-ranking (synthetic data: a sanity check only)",
              "- wall seconds depend on what else the machine runs; CPU seconds (all threads) are the work itself",
              "", "| step | wall s | CPU s |", "|---|---:|---:|", *rows, ""]
    out_path = RESULTS / ("rerank_speed.md" if a.images == 50_000 else f"rerank_speed_{a.images}.md")
    out_path.write_text("\n".join(report), encoding="utf-8")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
