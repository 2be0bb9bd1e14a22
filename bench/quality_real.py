"""CIFAR-10 train images under their CIFAR-10N human labels (or their true labels), written from the packed
npz files of ../shared/data with numpy and Pillow.

to_folder.py takes the FIRST N images of each class; a result tuned on those must also be checked on
images it never saw, so this writer can take the LAST N of each class of the dev rows 0..44,999 (the rows
CIFAR-10N labels) as well. The layout is to_folder.py's: OUT/<given label>/cifar10_train_<row>.png and
OUT/truth.csv with path,true_label,given_label, one row per image in row order.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

# CIFAR-10N label sets by the names of the cases (cifar10n-<name>) -> arrays of cifar10n_dev_labels.npz.
HUMAN: dict[str, str] = {"worst": "worse_label", "aggre": "aggre_label", "random1": "random_label1"}
ROWS: tuple[str, ...] = ("first", "last")
TRAIN_NPZ = "cifar10_train_jpeg.npz"
HUMAN_NPZ = "cifar10n_dev_labels.npz"


def select_rows(true: np.ndarray, n_per_class: int | None, which: str) -> np.ndarray:
    """Sorted row indices: the first or last `n_per_class` rows of each true class (None: every row).

    Raises ValueError when a class has fewer rows than asked for: a short class would silently change
    the class balance the case's name promises.
    """
    if which not in ROWS:
        raise ValueError(f"--rows must be one of {', '.join(ROWS)}, got {which!r}")
    picked = []
    for c in np.unique(true):
        rows = np.flatnonzero(true == c)
        if n_per_class is not None:
            if len(rows) < n_per_class:
                raise ValueError(f"class {c} has only {len(rows):,} images in the labelled rows, "
                                 f"fewer than --n-per-class {n_per_class:,}")
            rows = rows[:n_per_class] if which == "first" else rows[len(rows) - n_per_class:]
        picked.append(rows)
    return np.sort(np.concatenate(picked))


def dev_labels(shared: Path, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(true, given) labels of CIFAR-10 train rows 0..44,999; labels = a HUMAN key or "clean" (given = true)."""
    human = np.load(shared / HUMAN_NPZ)
    true = human["clean_label"].astype(np.int64)
    if labels == "clean":
        return true, true.copy()
    if labels not in HUMAN:
        raise ValueError(f"unknown CIFAR-10N label set {labels!r}: use clean or one of {', '.join(HUMAN)}")
    return true, human[HUMAN[labels]].astype(np.int64)


def write_cifar10_dev(shared: Path, out: Path, *, labels: str, n_per_class: int | None, rows: str) -> int:
    """Write the folder of one case; returns the number of images written."""
    from PIL import Image

    true, given = dev_labels(shared, labels)
    z = np.load(shared / TRAIN_NPZ)
    if not (z["label"][: len(true)] == true).all():  # the two files must describe the same images
        raise ValueError(f"{HUMAN_NPZ} is not aligned with {TRAIN_NPZ}: their clean labels differ")
    jpeg, offsets = z["jpeg"], z["offsets"]
    classes = [str(c) for c in z["classes"]]
    picked = select_rows(true, n_per_class, rows)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "given_label"])
        for i in picked:
            rel = Path(classes[given[i]]) / f"cifar10_train_{i:05d}.png"
            (out / rel.parent).mkdir(exist_ok=True)
            Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB").save(out / rel)
            w.writerow([rel.as_posix(), classes[true[i]], classes[given[i]]])
    return len(picked)
