#!/usr/bin/env python3
"""Rebuild the bundled sample data set, byte for byte, from scikit-learn's copy of the handwritten digits.

    python sample_data/build.py             # rewrites sample_data/0 .. sample_data/9 and sample_data/truth.csv
    python sample_data/build.py --out DIR   # writes the same files into DIR instead

The 1,797 8x8 digits (grey levels 0..16) are scaled to 0..255 and upscaled smoothly (bicubic) to
32x32 grey PNGs named by their index in scikit-learn's order (`digit_0042.png`). 20 % of each digit's
images are then filed under a confusable digit (asymmetric noise, engine.data.noise.DIGIT_CONFUSIONS,
seed 0), and truth.csv records path,true_label,given_label for every image. See README.md.

PNGs are written without metadata (no time stamp), so the output depends only on the inputs and the
pinned Pillow version.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere: make `engine` importable

from engine.data.noise import digits_mapping, inject_noise  # noqa: E402

SIZE = 32
KIND = "asymmetric"
RATE = 0.2
SEED = 0
CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


def render_digit(pixels: np.ndarray, size: int = SIZE) -> Image.Image:
    """(8, 8) grey levels 0..16 -> `size` x `size` grey ("L") image, smoothly upscaled."""
    grey = np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def build(out: Path = HERE) -> Path:
    """Write the digit folders and truth.csv into `out` (old digit folders there are replaced)."""
    out = Path(out)
    digits = load_digits()
    true = digits.target.astype(np.int64)
    result = inject_noise(true, classes=CLASSES, kind=KIND, rate=RATE, seed=SEED, mapping=digits_mapping(CLASSES))
    for name in CLASSES:
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    rows = []
    for i, (pixels, t, g) in enumerate(zip(digits.images, true.tolist(), result.noisy_labels.tolist(), strict=True)):
        rel = f"{CLASSES[g]}/digit_{i:04d}.png"
        render_digit(pixels).save(out / rel, format="PNG", compress_level=9)
        rows.append((rel, CLASSES[t], CLASSES[g]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "true_label", "given_label"))
    writer.writerows(rows)
    (out / "truth.csv").write_text(buf.getvalue(), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: this folder)")
    args = parser.parse_args(argv)
    out = build(args.out)
    flipped = sum(1 for line in (out / "truth.csv").read_text().splitlines()[1:] if len(set(line.split(",")[1:])) > 1)
    print(f"wrote 1797 digit images to {out} ({flipped} filed under a wrong digit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
