#!/usr/bin/env python3
"""Speed of the intake scan and of the prepare (decode-once) step with 1 and N decoding processes.

    .venv/bin/python bench/prepare_speed.py          # writes bench/results/prepare_speed.md

Data, written once under bench/data/ (git-ignored) from ../shared/data with its to_folder.py:
    cifar10-5k      5,000 CIFAR-10 training images, 32x32 PNG (500 per class), prepared to 32 px
    imagenette-1k   1,000 Imagenette training photos, 96x96 (100 per class, fastai's 25 % noisy labels;
                    to_folder.py writes the packed JPEGs out as PNG), prepared to 96 px
    large-jpeg      300 smooth synthetic 1024x768 JPEGs written by this script, prepared to 32 px: the
                    decode cost of ordinary photos (libjpeg decodes at reduced scale, then one resize)

    cifar10-20k     20,000 CIFAR-10 training images (2,000 per class), prepared to 32 px: a dataset large
                    enough for the default to start helper processes

For each, engine.data.cache.prepare runs with 1 process; with N processes (N = the cores this process
may use), the default, which starts helpers only when the decoding left would take more than a few
seconds; with N processes and helpers started at once whatever the size; and with N threads. The
configurations are interleaved over --repeats rounds, so a load spike on this shared machine hits them
alike; the table gives the median and the slowest round, and the speed-up is median(1 process) /
median(configuration). Every configuration's images.npy is checked to be byte-identical to the
1-process one. The machine is shared: each round also times a pure-Python busy loop in 1 and in N
processes, which says how much parallel CPU the machine actually offered during the run. The scan rows
time engine.data.intake.scan on the CIFAR-10 5k folder.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` lives in the repository root

from bench.common import DATA, RESULTS, TO_FOLDER, ensure_cifar10, machine_lines, usable_cores  # noqa: E402
from engine.data import cache  # noqa: E402
from engine.data.cache import prepare  # noqa: E402
from engine.data.intake import DatasetRecord, scan  # noqa: E402

N_LARGE = 300


def ensure_imagenette(folder: Path, per_class: int = 100) -> Path:
    """Imagenette training photos (96 px) with fastai's 25 % noisy labels, written once."""
    if folder.is_dir() and sum(1 for _ in folder.glob("*/*.png")) == per_class * 10:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    subprocess.run([sys.executable, str(TO_FOLDER), "imagenette", "--split", "train", "--noisy", "25",
                    "--per-class", str(per_class), "--out", str(tmp / "d")], check=True, stdout=subprocess.DEVNULL)
    (tmp / "d").rename(folder)
    tmp.rmdir()
    return folder


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


def busy_loop(n: int = 4_000_000) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - start


def parallel_capacity(pool: multiprocessing.pool.Pool, workers: int) -> float:
    """Speed-up of `workers` copies of a CPU-bound loop in separate processes over running them one after another
    here: 1.0 means the other cores were busy with other work, `workers` means they were idle."""
    serial = sum(busy_loop() for _ in range(workers))
    start = time.perf_counter()
    pool.map(busy_loop, [4_000_000] * workers)
    return serial / (time.perf_counter() - start)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


Config = tuple[str, str, int, bool]  # label, pool, workers, helpers at once


def configs_for(cores: int) -> list[Config]:
    return [("1 process", "process", 1, False),
            (f"{cores} processes (the default)", "process", cores, False),
            (f"{cores} processes, helpers started at once", "process", cores, True),
            (f"{cores} threads, helpers started at once", "thread", cores, True)]


def run_prepare(record: DatasetRecord, out: Path, size: int, pool: str, workers: int, at_once: bool) -> float:
    default = cache._PARALLEL_AFTER_S
    cache._PARALLEL_AFTER_S = 0.0 if at_once else default
    try:
        return seconds(lambda: prepare(record, out, image_size=size, workers=workers, pool=pool))  # type: ignore[arg-type]
    finally:
        cache._PARALLEL_AFTER_S = default


def table(title: str, n: int, rows: list[tuple[str, list[float]]]) -> list[str]:
    """Markdown rows: median and slowest round of each configuration, against the first (1 process)."""
    base = statistics.median(rows[0][1])
    out = [f"| {title} | median s | slowest s | images/s (median) | images/s (slowest) | vs 1 process |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, t in rows:
        med, worst = statistics.median(t), max(t)
        out.append(f"| {name} | {med:.2f} | {worst:.2f} | {n / med:,.0f} | {n / worst:,.0f} | {base / med:.2f}x |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "prepare_speed.md")
    a = p.parse_args(argv)
    cores = usable_cores()
    configs = configs_for(cores)
    sets = [("cifar10-5k", ensure_cifar10(DATA / "cifar10-5k"), 32, "5,000 CIFAR-10 PNGs, 32x32 -> 32 px"),
            ("imagenette-1k", ensure_imagenette(DATA / "imagenette-1k"), 96,
             "1,000 Imagenette photos, 96x96 PNG -> 96 px"),
            ("large-jpeg", ensure_large_jpegs(DATA / "large-jpeg"), 32, "300 1024x768 JPEGs -> 32 px"),
            ("cifar10-20k", ensure_cifar10(DATA / "cifar10-20k", per_class=2000), 32,
             "20,000 CIFAR-10 PNGs, 32x32 -> 32 px")]
    records = {name: scan(folder, check="header") for name, folder, _, _ in sets}
    scan_rows = [(f'scan, check="{c}"', [seconds(lambda c=c: scan(sets[0][1], check=c)) for _ in range(a.repeats)])
                 for c in ("full", "header")]
    times: dict[tuple[str, str], list[float]] = {(s[0], c[0]): [] for s in sets for c in configs}
    capacity: list[float] = []
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as tmp, \
            multiprocessing.get_context("spawn").Pool(cores) as pool:
        for r in range(a.repeats):
            capacity.append(parallel_capacity(pool, cores))
            for name, _, size, _ in sets:
                for label, kind, workers, at_once in configs:
                    out = Path(tmp) / f"{name}-{kind}{workers}{at_once}"
                    times[(name, label)].append(run_prepare(records[name], out, size, kind, workers, at_once))
                    print(f"round {r + 1}/{a.repeats}  {name:<14} {label:<40} {times[(name, label)][-1]:.2f} s",
                          flush=True)
        for name, _, _, _ in sets:  # every configuration wrote the 1-process bytes
            outs = [Path(tmp) / f"{name}-{kind}{workers}{at_once}" / "images.npy" for _, kind, workers, at_once in configs]
            assert all(o.read_bytes() == outs[0].read_bytes() for o in outs[1:]), name
    report = ["# Intake scan and prepare speed (CPU)", "", *machine_lines(),
              f"- Pillow {PIL.__version__}, numpy {np.__version__}; {a.repeats} interleaved rounds per configuration",
              f"- parallel CPU the machine offered during the run ({cores} busy loops in {cores} processes against one "
              f"after another): {', '.join(f'{c:.2f}x' for c in capacity)} (ideal {cores:.2f}x)",
              "- command: `python bench/prepare_speed.py" + (f" --repeats {a.repeats}`" if a.repeats != 3 else "`"), "",
              "| step (5,000 CIFAR-10 PNGs) | median s | slowest s | images/s (median) |", "|---|---:|---:|---:|"]
    report += [f"| {name} | {statistics.median(t):.2f} | {max(t):.2f} | "
               f"{len(records['cifar10-5k'].samples) / statistics.median(t):,.0f} |" for name, t in scan_rows]
    for name, _, _, title in sets:
        report += ["", *table(title, len(records[name].samples), [(c[0], times[(name, c[0])]) for c in configs])]
    report += ["", "Every configuration wrote byte-identical images.npy files.", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
