"""Server-side render time of the Review and Inspect pages on a synthetic 50,000-image run.

Builds a run folder the size of a real CIFAR-scale job (samples.csv, umap.npy, split.json, metrics.json;
images are hard links to one small PNG per class, so every path exists without 50,000 encodes), then
renders the pages with Streamlit's AppTest — the same script run a browser triggers, minus the network —
and reports the first (cold) render and the median of repeated renders.

    python bench/app_render.py [--n 50000] [--repeats 7]

Writes bench/results/app_render.md. Targets: Review < 1 s per page, Inspect (UMAP map) < 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.common import cpu_model  # noqa: E402
from engine.config import RunConfig, to_dict  # noqa: E402
from engine.review.decisions import DecisionStore  # noqa: E402
from engine.runs.atomic import atomic_write_json, now_iso  # noqa: E402
from engine.runs.rundir import RunDir  # noqa: E402
from ui.charts import MAP_POINTS  # noqa: E402

TARGETS = {"review": 1.0, "inspect": 3.0}


def build_run(root: Path, n: int, n_classes: int = 10, flagged_rate: float = 0.15, seed: int = 0) -> RunDir:
    """A finished 50k-image run: every samples.csv column, a UMAP map, the mixture, a few decisions."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{k}" for k in range(n_classes)]
    data = root / "images"
    run = RunDir(root / "workspace" / "runs" / "2026-11-27T00-00-00_bench")
    run.path.mkdir(parents=True, exist_ok=True)
    given = rng.integers(0, n_classes, n)
    flagged = rng.random(n) < flagged_rate
    suggested = np.where(flagged, (given + rng.integers(1, n_classes, n)) % n_classes, given)
    clean_prob = np.where(flagged, rng.uniform(0.0, 0.5, n), rng.uniform(0.5, 1.0, n))
    paths = np.array([f"{classes[g]}/img_{i:06d}.png" for i, g in enumerate(given)])
    frame = pd.DataFrame({
        "index": np.arange(n), "id": [f"{i:016x}" for i in range(n)], "path": paths,
        "given_label": np.array(classes)[given], "predicted_label": np.array(classes)[suggested],
        "confidence": rng.uniform(0.3, 1.0, n), "loss": rng.gamma(2.0, 0.5, n), "loss_norm": 1 - clean_prob,
        "clean_prob": clean_prob, "flagged": flagged.astype(int), "suggested_label": np.array(classes)[suggested],
        "suggested_prob": rng.uniform(0.3, 1.0, n), "given_prob": rng.uniform(0.0, 0.7, n),
        "suspicion": np.where(flagged, 1 - clean_prob, 0.0),
        "top1_label": np.array(classes)[suggested], "top1_prob": rng.uniform(0.4, 1.0, n),
        "top2_label": np.array(classes)[(suggested + 1) % n_classes], "top2_prob": rng.uniform(0.0, 0.3, n),
        "top3_label": np.array(classes)[(suggested + 2) % n_classes], "top3_prob": rng.uniform(0.0, 0.1, n),
        "true_label": np.array(classes)[given],
    })
    frame.to_csv(run.samples, index=False)
    np.save(run.umap, (rng.normal(size=(n, 2)) + given[:, None] * 3).astype(np.float32))
    atomic_write_json(run.split, {
        "means": [0.2, 0.75], "stds": [0.1, 0.12], "weights": [0.85, 0.15], "threshold": 0.5, "loss_threshold": 0.5,
        "n_flagged": int(flagged.sum()), "n": n, "degenerate": False,
        "per_class": {c: {"n": int((given == k).sum()), "flagged": int((flagged & (given == k)).sum()),
                          "noise_rate": float((flagged & (given == k)).sum() / max((given == k).sum(), 1))}
                      for k, c in enumerate(classes)},
    })
    atomic_write_json(run.metrics, {"phase": "fit", "n": n, "n_mislabeled": int(flagged.sum()), "precision": 0.9,
                                    "recall": 0.8, "f1": 0.85, "auroc": 0.97, "corrected_accuracy": 0.95,
                                    "pseudo_label_accuracy": 0.93, "given_label_accuracy": 0.85})
    atomic_write_json(run.config, to_dict(RunConfig()))
    atomic_write_json(run.source, {"data": str(data), "root": str(data), "kind": "folder", "truth": None,
                                   "test": None, "classes": classes})
    atomic_write_json(run.status_file, {"state": "done", "phase": "fit", "stage": "done", "step": 1, "total": 1,
                                        "pid": None, "started_at": now_iso(), "completed_stages": []})
    _link_images(data, classes, paths)
    store = DecisionStore(run.decisions)
    for label, part in frame[flagged].head(500).groupby("given_label"):  # 500 images already reviewed
        store.decide(part["path"].tolist(), "keep", label, source="bench")
    return run


def _link_images(data: Path, classes: list[str], paths: np.ndarray) -> None:
    """One real PNG per class; every image path is a hard link to it (cheap, and each path exists)."""
    base = data / ".base"
    base.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(classes):
        (data / c).mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), (25 * k, 255 - 25 * k, 128)).save(base / f"{c}.png")
    for rel in paths:
        target = data / rel
        if not target.exists():
            os.link(base / f"{rel.split('/')[0]}.png", target)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def once_per_process() -> None:
    """AppTest scans every installed package for Streamlit components on each run (2.4 s here); a server
    does it once, when it starts (streamlit.runtime.Runtime). The scan is kept, so the times are the page's."""
    from streamlit.components.v2 import manifest_scanner

    found = manifest_scanner.scan_component_manifests()
    manifest_scanner.scan_component_manifests = lambda *a, **k: found


def measure(run: RunDir, repeats: int) -> list[dict]:
    from fixtures_runs import open_page

    from engine.runs import jobs

    jobs.detect_devices = lambda *a, **k: {"cuda": False, "devices": [], "default": "cpu"}  # no subprocess here
    once_per_process()
    rows = []
    for name in ("review", "inspect"):
        first, at = timed(lambda name=name: open_page(name, run_id=run.path.name, timeout=120))
        assert not at.exception, [e.message for e in at.exception]
        sessions = [timed(lambda name=name: open_page(name, run_id=run.path.name, timeout=120))[0]
                    for _ in range(repeats)]
        reruns = []
        for i in range(repeats):
            if name == "review":  # a real interaction: Keep on the focused card, then the page renders again
                button = at.button(key="kb_keep")
                reruns.append(timed(lambda b=button: b.click().run())[0])
            else:
                colour = ("given", "suggested", "clean")[i % 3]
                radio = at.radio(key="umap_colour")
                reruns.append(timed(lambda r=radio, c=colour: r.set_value(c).run())[0])
            assert not at.exception
        rows.append({"page": name, "first": first, "new session": statistics.median(sessions),
                     "rerun": statistics.median(reruns), "target": TARGETS[name]})
    return rows


def report(rows: list[dict], n: int, n_flagged: int, repeats: int, build_s: float) -> str:
    lines = [
        "# App render time (server side, AppTest)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",  # noqa: UP017
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.2f}",
        f"- Python {platform.python_version()}, streamlit {__import__('streamlit').__version__}, "
        f"plotly {__import__('plotly').__version__}, pandas {pd.__version__}",
        f"- workload: synthetic run of {n:,} images, 10 classes, {n_flagged:,} flagged (review queue), "
        f"500 decisions already made; UMAP map of {min(n, MAP_POINTS):,} points (Scattergl; above "
        f"{MAP_POINTS:,} images a random sample, ui.charts.MAP_POINTS)",
        f"- command: `python bench/app_render.py --n {n} --repeats {repeats}` (building the run took {build_s:.1f} s)",
        "- first = a new browser session on cold caches (reads samples.csv, umap.npy); new session = the same "
        f"with warm caches (median of {repeats}); rerun = the page after one interaction (Review: Keep on the "
        "focused card, written to SQLite; Inspect: change the map colouring), median of "
        f"{repeats}",
        "",
        "| page | first (s) | new session (s) | rerun after an action (s) | target (s) | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        met = "yes" if max(r["new session"], r["rerun"]) < r["target"] else "no"
        lines.append(f"| {r['page']} | {r['first']:.2f} | {r['new session']:.2f} | {r['rerun']:.2f} | "
                     f"< {r['target']:.0f} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "app_render")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "app_render.md")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    build_s, run = timed(lambda: build_run(args.work, args.n))
    os.environ["CLEAN_WORKSPACE"] = str(args.work / "workspace")
    rows = measure(run, args.repeats)
    n_flagged = json.loads(run.split.read_text())["n_flagged"]
    text = report(rows, args.n, n_flagged, args.repeats, build_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if all(max(r["new session"], r["rerun"]) < r["target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
