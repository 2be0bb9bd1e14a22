#!/usr/bin/env python3
"""Speed of the intake scan and the prepare (decode-once) step on 5,000 real CIFAR-10 PNGs.

    .venv/bin/python bench/prepare_speed.py          # writes bench/results/prepare_speed.md

Writes 5,000 CIFAR-10 training images (500 per class, 32x32 PNG) once into bench/data/cifar10-5k with
../shared/data/to_folder.py, then times, on this machine:
    scan     engine.data.intake.scan with check="full" (decodes every image) and check="header"
    prepare  engine.data.cache.prepare at 32 px with a thread pool of 1 and 2 workers and a process pool of 2
and, to see where the choice of pool matters, prepare on 300 large JPEGs (1024x768, smooth synthetic
pictures written by this script into bench/data/large-jpeg; the decode cost is that of any photo).
Each figure is the best of --repeats runs (the machine is shared, so the best run is the least
disturbed one).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import PIL
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` lives in the repository root

from bench.common import cpu_model, ensure_cifar10, usable_cores  # noqa: E402
from engine.data.cache import prepare  # noqa: E402
from engine.data.intake import scan  # noqa: E402

DATA = ROOT / "bench" / "data" / "cifar10-5k"
LARGE = ROOT / "bench" / "data" / "large-jpeg"
N_LARGE = 300
RESULTS = ROOT / "bench" / "results" / "prepare_speed.md"
N_IMAGES = 5000


def ensure_large_jpegs(folder: Path) -> Path:
    """300 smooth 1024x768 JPEGs in two class folders (deterministic), written once."""
    if folder.is_dir() and sum(1 for _ in folder.glob("*/*.jpg")) == N_LARGE:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(N_LARGE):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        picture = PIL.Image.fromarray(small).resize((1024, 768), PIL.Image.Resampling.BICUBIC)
        (folder / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        picture.save(folder / "ab"[i % 2] / f"{i:03d}.jpg", quality=90)
    return folder


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    data = ensure_cifar10(DATA)
    record = scan(data, check="header")
    assert len(record.samples) == N_IMAGES, len(record.samples)
    rows: list[tuple[str, float]] = []
    for check in ("full", "header"):
        rows.append((f'scan, check="{check}"', best_seconds(lambda c=check: scan(data, check=c), a.repeats)))
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as tmp:
        for pool, workers in (("thread", 1), ("thread", 2), ("process", 2)):
            run = lambda pool=pool, workers=workers: prepare(  # noqa: E731
                record, Path(tmp) / "cache", image_size=a.image_size, workers=workers, pool=pool
            )
            rows.append((f"prepare {a.image_size} px, {pool} pool x{workers}", best_seconds(run, a.repeats)))
        images = np.load(Path(tmp) / "cache" / "images.npy", mmap_mode="r")
        assert images.shape == (N_IMAGES, a.image_size, a.image_size, 3)
        large = scan(ensure_large_jpegs(LARGE), check="header")
        large_rows: list[tuple[str, float]] = []
        for pool, workers in (("thread", 1), ("thread", 2), ("process", 2)):
            run = lambda pool=pool, workers=workers: prepare(  # noqa: E731
                large, Path(tmp) / "large", image_size=a.image_size, workers=workers, pool=pool
            )
            large_rows.append((f"prepare {a.image_size} px, {pool} pool x{workers}", best_seconds(run, a.repeats)))

    cores = usable_cores()
    table = ["| step | seconds | images / s |", "|---|---:|---:|"]
    table += [f"| {name} | {sec:.2f} | {N_IMAGES / sec:,.0f} |" for name, sec in rows]
    table_large = ["| step (1024x768 JPEGs) | seconds | images / s |", "|---|---:|---:|"]
    table_large += [f"| {name} | {sec:.2f} | {N_LARGE / sec:,.0f} |" for name, sec in large_rows]
    print("\n".join(table + [""] + table_large))
    report = [
        "# Intake scan and prepare speed (CPU)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu_model()}, {cores} cores usable, load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"- Python {platform.python_version()}, Pillow {PIL.__version__}, numpy {np.__version__}",
        f"- workload: {N_IMAGES:,} CIFAR-10 training PNGs (32x32 RGB, 500 per class) written by "
        "`../shared/data/to_folder.py cifar10 --split train --per-class 500`; prepare decodes them to "
        f"{a.image_size} px into images.npy; best of {a.repeats} runs",
        "- command: `python bench/prepare_speed.py`",
        "",
        *table,
        "",
        f"Large photos: {N_LARGE} smooth synthetic 1024x768 JPEGs (quality 90) in bench/data/large-jpeg, "
        f"prepared to {a.image_size} px (libjpeg decodes them at reduced scale, then one bicubic resize):",
        "",
        *table_large,
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(report), encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
