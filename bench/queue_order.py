"""How good is the review queue's order? Two formulas of the suspicion side by side on finished runs.

    python bench/queue_order.py RUN [RUN ...]
    python bench/queue_order.py      # the runs bench/quality.py and bench/review_loop.py leave (below)

For each finished run with a truth file (samples.csv has `true_label`), the queue is rebuilt from what
the run saved — the mixture's clean probability (samples.csv) and the out-of-fold probability of the
given label (engine.method.out_of_fold on predictions.npz's features, with the run's own seed) — under

* plain sum: 0.5 (1 - clean_prob) + 0.5 (1 - p_given), the order before ranks;
* ranks: engine.method.selection.suspicion, the mean of the two ranks (today's order);
* the alternatives measured against it (`alternatives`: either signal alone, a third rank for the nearest
  neighbours' labels, per-class thresholds);

and scored as the review-loop benchmark does: wrong labels per 100 images in the top K % (K = 2, 5, 10,
20), and the AUROC of the order. Where bench/review_loop.py has cached cleanlab's label-quality ranking
of the same images (3-fold small CNN), it is scored alongside. No network runs: seconds per run.
Writes bench/results/queue_order.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT  # noqa: E402
from bench.saved_run import load_saved_run  # noqa: E402
from engine.method.neighbours import nearest_neighbours  # noqa: E402
from engine.method.selection import suspicion  # noqa: E402

KS = (2, 5, 10, 20)
KNN = 10
DEFAULT_RUNS = {  # run folder -> where review_loop.py caches cleanlab's ranking of the same images
    "bench/work/quality/cifar10n-worst-n2000/clean": "bench/work/review_loop/cifar10n-worst-n2000",
    "bench/work/quality/cifar10n-worst-n5000/clean": "bench/work/review_loop/cifar10n-worst-n5000",
    "bench/work/quality/cifar10n-aggre-n2000/clean": "bench/work/review_loop/cifar10n-aggre-n2000",
    "bench/work/quality/cifar10n-aggre-n5000/clean": "bench/work/review_loop/cifar10n-aggre-n5000",
    "bench/work/review_loop/sample/phase-a": "bench/work/review_loop/sample",
    # the CPU encoder's runs of bench/results/cpu_encoder.md (small-cnn), same images as the ResNet runs above
    "bench/work/cpu_encoder/worst": "bench/work/review_loop/cifar10n-worst-n2000",
    "bench/work/cpu_encoder/aggre": "bench/work/review_loop/cifar10n-aggre-n2000",
    "bench/work/cpu_encoder/sample": "bench/work/review_loop/sample",
    "bench/work/cpu_encoder/imnet": "bench/work/review_loop/imagenette25-200pc",
    "bench/work/review_loop/imagenette25-200pc/phase-a": "bench/work/review_loop/imagenette25-200pc",
}


def plain_sum(clean_prob: np.ndarray, p_given: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 - clean_prob) + 0.5 * (1.0 - p_given)


def _rank(x: np.ndarray) -> np.ndarray:
    return rankdata(x) / len(x)


def alternatives(clean_prob: np.ndarray, p_given: np.ndarray, oof: np.ndarray, given: np.ndarray,
                 features: np.ndarray) -> dict[str, np.ndarray]:
    """Other orders measured against today's, each a score whose descending order is the queue:

    * one signal alone: the mixture's doubt, the out-of-fold doubt;
    * a third rank: the share of the KNN nearest images (cosine of the features) whose given label differs;
    * cleanlab-style thresholds: p_given relative to the mean p_given of its given class.
    """
    n = len(given)
    ids = nearest_neighbours(features, KNN)
    valid = ids >= 0
    disagree = ((given[np.where(valid, ids, 0)] != given[:, None]) & valid).sum(1) / np.maximum(valid.sum(1), 1)
    num_classes = oof.shape[1]
    class_mean = np.array([p_given[given == c].mean() if (given == c).any() else 1.0 for c in range(num_classes)])
    return {
        "mixture alone": 1.0 - clean_prob,
        "out-of-fold alone": 1.0 - p_given,
        f"ranks + {KNN} neighbours' disagreement": (_rank(1 - clean_prob) + _rank(1 - p_given) + _rank(disagree)) / 3,
        "out-of-fold / its class mean": -(p_given / np.maximum(class_mean[given], 1e-12)),
    } if n else {}


def found_per_100(order_score: np.ndarray, wrong: np.ndarray) -> list[float]:
    order = np.argsort(-order_score, kind="stable")
    return [100.0 * wrong[order[: max(1, int(len(wrong) * k / 100))]].mean() for k in KS]


def cleanlab_order(cache_dir: Path, paths: np.ndarray) -> np.ndarray | None:
    """A score whose descending order is cleanlab's ranking of `paths` (None: none cached for them)."""
    files = sorted(cache_dir.glob("cleanlab_ranking_*.json")) if cache_dir.is_dir() else []
    if not files:
        return None
    ranked = json.loads(files[0].read_text())["paths"]
    if set(ranked) != set(paths):
        return None
    place = {p: i for i, p in enumerate(ranked)}
    return -np.array([place[p] for p in paths], dtype=np.float64)


def score_run(run: Path, cache_dir: Path | None) -> dict:
    saved = load_saved_run(run)
    s, cfg, given, wrong, features = saved.samples, saved.config, saved.given, saved.wrong, saved.features
    oof = saved.out_of_fold()
    clean_prob = s["clean_prob"].to_numpy(float)
    p_given = oof[np.arange(len(given)), given]
    orders = {"plain sum (before)": plain_sum(clean_prob, p_given), "ranks (today)": suspicion(clean_prob, oof, given),
              **alternatives(clean_prob, p_given, oof, given, features)}
    cl = cleanlab_order(cache_dir, s["path"].to_numpy(object)) if cache_dir else None
    if cl is not None:
        orders["cleanlab, 3-fold small CNN"] = cl
    return {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "n": len(s),
            "wrong": int(wrong.sum()), "epochs": (cfg["pretrain"]["epochs"], cfg["classify"]["epochs"]),
            "arch": cfg.get("model", {}).get("arch", "resnet18"),
            "rows": {name: {"found": found_per_100(v, wrong), "auroc": float(roc_auc_score(wrong, v))
                            if 0 < wrong.sum() < len(wrong) else None} for name, v in orders.items()}}


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Review-queue order: plain sum, ranks and the alternatives", "",
             "Wrong labels found per 100 images reviewed in the top K % of the queue, rebuilt from each finished "
             "run's saved clean probabilities and out-of-fold p_given (no network runs); AUROC of the whole order.",
             "", f"- command: `{command}`", f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", ""]
    for r in results:
        lines += [f"## {r['run']}", "",
                  f"{r['n']:,} images, {r['wrong']:,} wrong labels; the run trained {r['epochs'][0]} + "
                  f"{r['epochs'][1]} epochs ({r.get('arch', 'resnet18')} encoder).", "",
                  "| order | " + " | ".join(f"K = {k} %" for k in KS) + " | AUROC |",
                  "|---|" + "---:|" * (len(KS) + 1)]
        for name, row in r["rows"].items():
            auroc = "–" if row["auroc"] is None else f"{row['auroc']:.3f}"
            lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in row["found"]) + f" | {auroc} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS / "queue_order.md")
    args = p.parse_args(argv)
    pairs = [(r, None) for r in args.runs] or [(ROOT / r, ROOT / c) for r, c in DEFAULT_RUNS.items()
                                               if (ROOT / r / "samples.csv").exists()]
    results = [score_run(run, cache) for run, cache in pairs]
    text = markdown(results, "python bench/queue_order.py " + " ".join(str(r) for r in args.runs))
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
