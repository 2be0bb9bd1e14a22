#!/usr/bin/env python3
"""A deterministic noisy-label benchmark from scikit-learn's handwritten digits.

    python bench/digits.py --out bench/data/digits40 --test-out bench/data/digits-test
    python bench/digits.py --out DIR [--n 3000] [--size 28] [--rate 0.4] [--kind symmetric] [--seed 0]
                           [--test-out DIR] [--n-test 1000] [--clean]

Writes `n` grey `size` x `size` PNGs balanced over the ten digits, filed under labels noised by
engine.data.noise (40 % symmetric by default: exactly 40 % of every digit carries a wrong label), and
OUT/truth.csv (path,true_label,given_label). This is the "3,000 grey 28x28 digits with 40 % symmetric
noise" data set of the quality targets.

scikit-learn ships 1,797 8x8 digits, fewer than 3,000, so each image is an upscaled source digit with
its own small random affine jitter (rotation +-10 degrees, shift +-2 px, scale 0.9-1.1): two copies of
one source digit are never the same picture. The source digits are split once per seed, per class,
into a train pool (2/3) and a test pool (1/3); `--test-out` writes a clean, labelled test folder from
the test pool only, so no test image shares a source digit with a training image.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `engine` importable

from engine.data.noise import digits_mapping, inject_noise  # noqa: E402

CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
TRAIN_SHARE = 2 / 3
MAX_ROTATION_DEG = 10.0
MAX_SHIFT_PX = 2.0
SCALE_RANGE = (0.9, 1.1)


def make_digits(
    out: Path,
    *,
    n: int = 3000,
    size: int = 28,
    kind: str = "symmetric",
    rate: float = 0.4,
    seed: int = 0,
    noise: bool = True,
    test_out: Path | None = None,
    n_test: int = 1000,
) -> Path:
    """Write the noisy training folder to `out` (and a clean test folder to `test_out`); return `out`.

    Args:
        out: new or empty folder: OUT/<given label>/img_<k>.png and OUT/truth.csv.
        n: training images, balanced over the ten digits.
        size: side in pixels.
        kind, rate: engine.data.noise settings ("asymmetric" uses engine.data.noise.DIGIT_CONFUSIONS).
        seed: seeds the source split, the jitter and the noise.
        noise: False writes the true labels (given_label == true_label).
        test_out: optional new or empty folder for a clean test set from the held-out source digits.
        n_test: test images, balanced over the ten digits.
    """
    for folder in (out, test_out):
        if folder is not None and Path(folder).exists() and any(Path(folder).iterdir()):
            raise ValueError(f"{folder} is not empty: choose a new folder")
    digits = load_digits()
    targets = digits.target.astype(np.int64)
    split_ss, train_ss, test_ss = np.random.SeedSequence(seed).spawn(3)
    train_pool, test_pool = split_sources(targets, np.random.default_rng(split_ss))
    true, pictures = _render_set(digits.images, targets, train_pool, n, size, np.random.default_rng(train_ss))
    given = true
    if noise:
        mapping = digits_mapping(CLASSES) if kind == "asymmetric" else None
        given = inject_noise(true, classes=CLASSES, kind=kind, rate=rate, seed=seed, mapping=mapping).noisy_labels
    _write_folder(Path(out), pictures, true, given, truth_csv=True)
    if test_out is not None:
        test_true, test_pictures = _render_set(
            digits.images, targets, test_pool, n_test, size, np.random.default_rng(test_ss)
        )
        _write_folder(Path(test_out), test_pictures, test_true, test_true, truth_csv=False)
    return Path(out)


def split_sources(targets: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, a shuffled train pool (first 2/3) and test pool (the rest) of source digit indices."""
    train, test = [], []
    for c in range(len(CLASSES)):
        members = rng.permutation(np.flatnonzero(targets == c))
        cut = int(math.ceil(len(members) * TRAIN_SHARE))
        train.append(members[:cut])
        test.append(members[cut:])
    return train, test


def jittered_digit(pixels: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """(8, 8) grey levels 0..16 -> a `size` x `size` grey image, upscaled then randomly rotated/shifted/scaled."""
    grey = np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    big = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    shift = rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, size=2)
    scale = rng.uniform(*SCALE_RANGE)
    # Pillow's AFFINE transform wants the inverse map (output pixel -> input pixel). Forward map:
    # p' = c + scale * R(angle) (p - c) + shift, so p = c + R(-angle) (p' - c - shift) / scale.
    # (Image.rotate has no scale, hence the matrix.)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    inverse = np.array([[cos, sin], [-sin, cos]])
    centre = np.array([size / 2.0, size / 2.0])
    offset = centre - inverse @ (centre + shift)
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return big.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC, fillcolor=0)


def _render_set(
    images: np.ndarray, targets: np.ndarray, pools: list[np.ndarray], n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[Image.Image]]:
    """n pictures balanced over classes, each source of a class's pool used in turn; shuffled order."""
    per_class = [n // len(CLASSES) + (1 if c < n % len(CLASSES) else 0) for c in range(len(CLASSES))]
    sources = np.concatenate([pools[c][np.arange(k) % len(pools[c])] for c, k in enumerate(per_class)])
    sources = sources[rng.permutation(len(sources))]  # file names must not reveal the class
    pictures = [jittered_digit(images[s], size, rng) for s in sources]
    return targets[sources], pictures


def _write_folder(
    out: Path, pictures: list[Image.Image], true: np.ndarray, given: np.ndarray, *, truth_csv: bool
) -> None:
    rows = []
    for k, (picture, t, g) in enumerate(zip(pictures, true.tolist(), given.tolist(), strict=True)):
        rel = f"{CLASSES[g]}/img_{k:05d}.png"
        (out / CLASSES[g]).mkdir(parents=True, exist_ok=True)
        picture.save(out / rel, format="PNG", compress_level=6)  # no metadata: same bytes every run
        rows.append((rel, CLASSES[t], CLASSES[g]))
    if truth_csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("path", "true_label", "given_label"))
        writer.writerows(rows)
        (out / "truth.csv").write_text(buf.getvalue(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--rate", type=float, default=0.4)
    p.add_argument("--kind", choices=["symmetric", "asymmetric", "pair"], default="symmetric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="no label noise")
    p.add_argument("--test-out", type=Path, default=None, help="also write a clean test folder here")
    p.add_argument("--n-test", type=int, default=1000)
    a = p.parse_args(argv)
    try:
        make_digits(a.out, n=a.n, size=a.size, kind=a.kind, rate=a.rate, seed=a.seed, noise=not a.clean,
                    test_out=a.test_out, n_test=a.n_test)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    noise = "no noise" if a.clean else f"{a.rate:.0%} {a.kind} noise"
    print(f"wrote {a.n} {a.size}x{a.size} digits with {noise} to {a.out}"
          + (f", {a.n_test} clean test digits to {a.test_out}" if a.test_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
