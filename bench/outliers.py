"""Outliers: images of classes the data set does not have, filed under the classes it has.

    python bench/outliers.py                       # write the data, fit a short CPU run, measure
    python bench/outliers.py --per-class 180 --foreign 0.05 --pretrain-epochs 4 --epochs 6

The data: `--per-class` CIFAR-10 train images of each of 8 classes (airplane ... ship) plus `--foreign`
(5 %) as many images of the two classes left out (truck, horse), each filed under one of the 8 at
random: images that belong to no class of the data set, the "maybe discard" case. A short
`python -m engine fit` on the CPU gives every image its `outlier_score` (samples.csv, engine.method
.outliers); the benchmark reports the AUROC of that score for the foreign images, and what the Review
page's "maybe discard" view (outlier_score >= 0.99) holds. For comparison: the AUROC of the
classifier's doubt in the given label (1 - given_prob), the signal the loss-based flags use.

Images are decoded from ../shared/data/cifar10_train_jpeg.npz (never copied into the repository) into
bench/data/outliers/ (git-ignored). Writes bench/results/outliers.md.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, RESULTS, ROOT, machine_lines  # noqa: E402

NPZ = ROOT.parent / "shared" / "data" / "cifar10_train_jpeg.npz"
FOREIGN_CLASSES = ("horse", "truck")  # CIFAR-10 classes left out of the data set
VIEW = 0.99  # the Review page's "maybe discard" view (engine.method.evidence.OUTLIER_VIEW)
HERE = DATA / "outliers"


def build(per_class: int, foreign_share: float, seed: int) -> tuple[Path, set[str]]:
    """The data folder and the paths of its foreign images."""
    z = np.load(NPZ)
    classes = [str(c) for c in z["classes"]]
    labels, jpeg, offsets = z["label"], z["jpeg"], z["offsets"]
    rng = np.random.default_rng(seed)
    kept = [c for c in classes if c not in FOREIGN_CLASSES]
    data = HERE / f"data-{per_class}-{foreign_share}-{seed}"
    foreign_list = data.parent / f"{data.name}-foreign.txt"
    if data.is_dir() and foreign_list.exists():
        return data, set(foreign_list.read_text().split())
    shutil.rmtree(data, ignore_errors=True)

    def write(i: int, rel: str) -> None:
        img = Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(data / rel)

    for c in kept:
        for i in rng.choice(np.flatnonzero(labels == classes.index(c)), per_class, replace=False):
            write(int(i), f"{c}/{int(i):05d}.png")
    n_foreign = round(foreign_share * per_class * len(kept))
    pool = np.flatnonzero(np.isin(labels, [classes.index(c) for c in FOREIGN_CLASSES]))
    foreign = []
    for i in rng.choice(pool, n_foreign, replace=False):
        rel = f"{kept[int(rng.integers(len(kept)))]}/foreign_{int(i):05d}.png"
        write(int(i), rel)
        foreign.append(rel)
    foreign_list.write_text("\n".join(foreign) + "\n")
    return data, set(foreign)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=180)
    ap.add_argument("--foreign", type=float, default=0.05, help="foreign images, as a share of the others")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data, foreign = build(args.per_class, args.foreign, args.seed)
    run = data.parent / f"run-{data.name}-p{args.pretrain_epochs}-e{args.epochs}"
    fit = [sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run), "--device", "cpu", "--quiet",
           "--pretrain-epochs", str(args.pretrain_epochs), "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--set", "embed.enabled=false"]
    if (run / "config.json").exists():
        fit.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(fit, check=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    s = pd.read_csv(run / "samples.csv", keep_default_na=False)
    is_foreign = s["path"].isin(foreign).to_numpy()
    score = s["outlier_score"].astype(float).to_numpy()
    doubt = 1.0 - s["given_prob"].astype(float).to_numpy()
    in_view = score >= VIEW
    top = np.argsort(-score, kind="stable")[:int(is_foreign.sum())]
    command = (f"python bench/outliers.py --per-class {args.per_class} --foreign {args.foreign} "
               f"--pretrain-epochs {args.pretrain_epochs} --epochs {args.epochs} --seed {args.seed}")
    lines = ["# Outliers: images of classes the data set does not have", "", *machine_lines(),
             f"- command: `{command}` (fit: `--device cpu --set embed.enabled=false`, {seconds:.0f} s)",
             f"- data: {len(s)} CIFAR-10 train images: {args.per_class} of each of 8 classes + {int(is_foreign.sum())} "
             f"of {' and '.join(FOREIGN_CLASSES)}, each filed under one of the 8 at random",
             "", "| score | AUROC (foreign images) |", "|---|---:|",
             f"| `outlier_score` (mean cosine distance to the 10 nearest images, percentile) | "
             f"{roc_auc_score(is_foreign, score):.3f} |",
             f"| 1 - given_prob (the classifier's doubt in the given label) | {roc_auc_score(is_foreign, doubt):.3f} |",
             "", f"\"Maybe discard\" view (outlier_score ≥ {VIEW}): {int(in_view.sum())} images, "
             f"{int((in_view & is_foreign).sum())} of them foreign. Among the {len(top)} most outlying images "
             f"(as many as there are foreign ones): {int(is_foreign[top].sum())} foreign. "
             f"Flagged by the loss split: {int(s['flagged'].astype(int)[is_foreign].sum())} of the "
             f"{int(is_foreign.sum())} foreign images.", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "outliers.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
