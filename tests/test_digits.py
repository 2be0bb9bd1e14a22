"""bench/digits.py: balanced, exactly noised, deterministic, jittered digits with a disjoint clean test split."""

from __future__ import annotations

import csv
import hashlib
import runpy
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from engine.data.intake import scan

DIGITS = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "digits.py"))


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_make_digits_small(tmp_path):
    out = DIGITS["make_digits"](tmp_path / "train", n=60, size=28, test_out=tmp_path / "test", n_test=20)
    with open(out / "truth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and list(rows[0]) == ["path", "true_label", "given_label"]
    assert all(r["path"].split("/")[0] == r["given_label"] for r in rows)
    true_counts = np.unique([r["true_label"] for r in rows], return_counts=True)[1]
    assert true_counts.tolist() == [6] * 10  # balanced over the digits
    wrong = [r for r in rows if r["true_label"] != r["given_label"]]
    assert len(wrong) == 10 * 2  # floor(0.4 * 6) = 2 per digit, symmetric: always another digit
    with Image.open(out / rows[0]["path"]) as im:
        assert im.mode == "L" and im.size == (28, 28)
    assert len(scan(out).samples) == 60
    test = scan(tmp_path / "test")
    assert len(test.samples) == 20 and test.counts() == {str(d): 2 for d in range(10)}


def test_deterministic_and_seeded(tmp_path):
    DIGITS["make_digits"](tmp_path / "a", n=30, size=16, seed=1)
    DIGITS["make_digits"](tmp_path / "b", n=30, size=16, seed=1)
    DIGITS["make_digits"](tmp_path / "c", n=30, size=16, seed=2)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b") != _hashes(tmp_path / "c")
    DIGITS["make_digits"](tmp_path / "clean", n=30, size=16, noise=False)
    with open(tmp_path / "clean" / "truth.csv", newline="") as f:
        assert all(r["true_label"] == r["given_label"] for r in csv.DictReader(f))


class _FixedDraws:
    """Stands in for a Generator: `uniform` returns the given values in call order (angle, shift, scale)."""

    def __init__(self, *values) -> None:
        self.values = list(values)

    def uniform(self, low, high, size=None):
        value = self.values.pop(0)
        assert np.all(low <= np.asarray(value)) and np.all(np.asarray(value) <= high)  # inside the documented range
        return value


def test_jitter_geometry():
    pixels = load_digits().images[0]
    plain = np.asarray(DIGITS["jittered_digit"](pixels, 28, _FixedDraws(0.0, np.zeros(2), 1.0))).astype(int)
    grey = np.rint(pixels * 255 / 16).astype(np.uint8)
    upscaled = np.asarray(Image.fromarray(grey).resize((28, 28), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(plain - upscaled).max() <= 1  # no jitter: just the smooth upscale
    moved = np.asarray(DIGITS["jittered_digit"](pixels, 28, _FixedDraws(0.0, np.array([2.0, -1.0]), 1.0))).astype(int)
    assert np.abs(moved[3:25, 4:26] - upscaled[4:26, 2:24]).max() <= 1  # 2 px right, 1 px up
    rotated = np.asarray(DIGITS["jittered_digit"](pixels, 28, _FixedDraws(10.0, np.zeros(2), 1.1))).astype(int)
    assert not np.array_equal(rotated, plain) and abs(rotated.mean() - plain.mean()) < 0.3 * plain.mean()


def test_jitter_makes_copies_differ_and_pools_are_disjoint():
    digits = load_digits()
    rng = np.random.default_rng(0)
    first = np.asarray(DIGITS["jittered_digit"](digits.images[0], 28, rng))
    second = np.asarray(DIGITS["jittered_digit"](digits.images[0], 28, rng))
    assert first.shape == (28, 28) and not np.array_equal(first, second)
    train, test = DIGITS["split_sources"](digits.target, np.random.default_rng(0))
    for c in range(10):
        assert set(train[c]).isdisjoint(test[c]) and len(train[c]) + len(test[c]) == (digits.target == c).sum()
        assert np.all(digits.target[train[c]] == c) and len(train[c]) > 2 * len(test[c]) - 2
