#!/usr/bin/env python3
"""A cache larger than the memory budget: pre-training steps streamed from disk against in memory, one run.

    .venv/bin/python bench/scale.py                  # 1,000,000 images at 32 px (3.1 GB), writes bench/results/scale.md
    .venv/bin/python bench/scale.py --images 100000 --steps 20 --rounds 1 --out /tmp/scale.md   # a quick look

Builds a synthetic decoded cache, bench/work/scale/images.npy (the .npy format of RUN/data/images.npy: seeded
random patterns, rolled per chunk), deleted at the end unless --keep. Then, in this one process:

    streamed      engine.train.trainset.TrainSet over the whole cache with data.memory_budget_gb = --budget-gb,
                  so every batch is read from the file: once with the file in the page cache, once "cold",
                  its pages dropped from the page cache before each round (posix_fadvise DONTNEED), so
                  every batch comes from the disk: the worst case, a cache larger than the RAM
    in memory     the same over the first --in-memory-images images (all of them when they fit comfortably)

Each mode trains its own network with the SimCLR step of bench/throughput.py (the pre-training network,
batched augmentation and NT-Xent), --rounds rounds of --steps steps, interleaved so that load on this
shared machine hits all modes alike; images/s counts dataset images (two views each) and includes
fetching the batch. Memory is read from /proc/self/status: the peak resident set (VmHWM, reset before
each measurement through /proc/self/clear_refs) above the level before, while streaming and while
loading the in-memory set. For comparison, the rows gathered by indexing the memory map directly
(what streaming avoids) show how the resident set grows with every page read.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine_lines  # noqa: E402
from bench.throughput import make_step, ours_batches, timed  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.method.augment import BatchAugment  # noqa: E402
from engine.method.models import resolve_stem  # noqa: E402
from engine.train.classify import Normalisation  # noqa: E402
from engine.train.device import make_runtime  # noqa: E402
from engine.train.trainset import TrainSet, free_host_bytes  # noqa: E402

WORK = ROOT / "bench" / "work" / "scale"
MB = 2**20
GB = 2**30


# ---------------------------------------------------------------------------------------------- memory


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Start VmHWM afresh at the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Peak:
    """Peak resident memory above the level at the start of a `with` block."""

    start_mb: float = 0.0
    growth_mb: float = 0.0

    def __enter__(self) -> Peak:
        reset_peak()
        self.start_mb = status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_mb = status_kb("VmHWM") / 1024 - self.start_mb


def cpu_pressure() -> str:
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        return ", ".join(f"{k.replace('avg', 'last ')} s {v}%" for k, v in (x.split("=") for x in some[1:4]))
    except (OSError, IndexError, ValueError):
        return "not available"


# ---------------------------------------------------------------------------------------------- the cache


def build_cache(path: Path, n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 .npy of seeded patterns, written a chunk at a time (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, 256, size=(4096, size, size, 3), dtype=np.uint8)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    chunk = max(1, (64 * MB) // (size * size * 3))
    for start in tqdm(range(0, n, chunk), desc="write cache", unit="chunk", file=sys.stderr):
        stop = min(start + chunk, n)
        picks = rng.integers(0, len(bank), size=stop - start)
        out[start:stop] = np.roll(bank[picks], shift=int(rng.integers(size)), axis=2)
    out.flush()
    del out
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return np.load(path, mmap_mode="r")


def drop_page_cache(path: Path) -> None:
    """Evict the file's (clean, unmapped) pages from the page cache: the next reads come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_page_cache(path: Path) -> None:
    buf = bytearray(64 * MB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def memmap_indexing_growth(path: Path, batches: int, batch_size: int, seed: int) -> float:
    """MB the resident set grows by when batch rows are gathered by indexing the memory map directly."""
    images = np.load(path, mmap_mode="r")
    gen = np.random.default_rng(seed)
    with Peak() as peak:
        for _ in range(batches):
            np.ascontiguousarray(images[np.sort(gen.choice(len(images), batch_size, replace=False))])
    del images
    return peak.growth_mb


def read_ms(data: TrainSet, batch_size: int, batches: int, seed: int) -> float:
    """Median milliseconds of data.batch() alone for random batches."""
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(batches):
        index = torch.randint(len(data), (batch_size,), generator=gen)
        t0 = time.perf_counter()
        data.batch(index)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-memory-images", type=int, default=None,
                   help="size of the in-memory set (default: all, or 200,000 when all would not fit comfortably)")
    p.add_argument("--budget-gb", type=float, default=0.5, help="data.memory_budget_gb of the streamed set")
    p.add_argument("--batch-size", type=int, default=None, help="default: the CPU profile's pre-training batch")
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core); on a "
                   "shared, saturated machine 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep bench/work/scale/images.npy")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.md")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    path = WORK / "images.npy"
    nbytes = a.images * a.image_size**2 * 3
    if shutil.disk_usage(WORK.parent if WORK.parent.exists() else ROOT).free < nbytes + GB:
        print(f"error: {nbytes / GB:.1f} GB of disk are needed under {WORK}", file=sys.stderr)
        return 2
    command = "python bench/scale.py" + (" " + shlex.join(argv) if argv else "")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` or a kill: still delete the 3 GB file
    try:
        return run(a, path, nbytes, command)
    finally:
        if not a.keep:
            path.unlink(missing_ok=True)


def run(a: argparse.Namespace, path: Path, nbytes: int, command: str) -> int:
    if a.threads:
        torch.set_num_threads(a.threads)
    rt = make_runtime("cpu")
    cfg = RunConfig()
    cfg = replace(cfg, data=replace(cfg.data, image_size=a.image_size))
    batch_size = a.batch_size or cfg.pretrain.batch_size
    auto_budget = 0.5 * free_host_bytes()
    # "Comfortably": the in-memory copy plus 2 GB for everything else within what is free now.
    n_memory = a.in_memory_images or (a.images if nbytes + 2 * GB < free_host_bytes() else min(a.images, 200_000))
    images = build_cache(path, a.images, a.image_size, a.seed)
    labels = np.zeros(a.images, np.int64)
    norm = Normalisation.of(images)
    del images  # from here on the file is read only through TrainSet, never mapped
    aug = BatchAugment(cfg.augment, out_size=a.image_size, mean=norm.mean, std=norm.std)

    streamed = TrainSet.from_numpy(np.load(path, mmap_mode="r"), labels, rt.device, memory_budget_gb=a.budget_gb)
    assert streamed.placement == "streamed", streamed.placement
    _, step_streamed = make_step(rt, cfg, 10)
    batches_streamed = ours_batches(streamed, aug, batch_size, a.seed)
    timed(batches_streamed, step_streamed, 2, batch_size, rt)  # optimiser state and activations exist now
    drop_page_cache(path)
    with Peak() as streaming_peak:
        cold_first = timed(batches_streamed, step_streamed, a.steps, batch_size, rt)
    memmap_growth = memmap_indexing_growth(path, a.steps, batch_size, a.seed)

    with Peak() as load_peak:
        head = np.load(path, mmap_mode="r")
        t0 = time.perf_counter()
        memory = TrainSet.from_numpy(head if n_memory == a.images else head[:n_memory], labels[:n_memory], rt.device,
                                     memory_budget_gb=2 * nbytes / GB)
        load_s = time.perf_counter() - t0
        del head
    assert memory.placement == "memory", memory.placement
    _, step_memory = make_step(rt, cfg, 10)
    batches_memory = ours_batches(memory, aug, batch_size, a.seed)
    timed(batches_memory, step_memory, 2, batch_size, rt)

    modes = {"in memory": (batches_memory, step_memory, None),
             "streamed, file in the page cache": (batches_streamed, step_streamed, "warm"),
             "streamed, cold: page cache dropped before each round": (batches_streamed, step_streamed, "cold")}
    speeds: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(a.rounds):
        for name, (batches, step, cache) in modes.items():
            if cache == "warm":
                warm_page_cache(path)
            elif cache == "cold":
                drop_page_cache(path)
            speeds[name].append(timed(batches, step, a.steps, batch_size, rt))
            print(f"round {r + 1}/{a.rounds}  {name:<54} {speeds[name][-1]:7.1f} images/s", flush=True)
    warm_page_cache(path)
    reads = {"in memory": read_ms(memory, batch_size, 200, a.seed),
             "streamed, file in the page cache": read_ms(streamed, batch_size, 200, a.seed)}
    drop_page_cache(path)
    reads["streamed, cold: page cache dropped before each round"] = read_ms(streamed, batch_size, 200, a.seed)

    base = statistics.median(speeds["in memory"])
    worst_ratio = min(min(v) for k, v in speeds.items() if k != "in memory") / base
    held = {"in memory": f"{n_memory:,} ({n_memory * a.image_size**2 * 3 / GB:.2f} GB)",
            "streamed, file in the page cache": f"{a.images:,} ({nbytes / GB:.2f} GB)",
            "streamed, cold: page cache dropped before each round": f"{a.images:,} ({nbytes / GB:.2f} GB)"}
    table = ["| mode | images | images/s (median) | slowest round | all rounds | vs in memory (median) | "
             "batch fetch alone, ms (median) |", "|---|---:|---:|---:|---|---:|---:|"]
    for name, v in speeds.items():
        table.append(f"| {name} | {held[name]} | {statistics.median(v):,.1f} | {min(v):,.1f} | "
                     f"{', '.join(f'{x:.0f}' for x in v)} | {statistics.median(v) / base:.2f}x | {reads[name]:.2f} |")
    goal = "met" if worst_ratio >= 0.8 else "NOT met"
    step_s = batch_size / base  # seconds per in-memory step
    bounded = "met" if streaming_peak.growth_mb < a.budget_gb * 1024 else "NOT met"
    stem = resolve_stem(cfg.model.stem, a.image_size, "cpu")
    report = [
        "# Datasets larger than the memory budget: streamed vs in memory (CPU)", "", *machine_lines(),
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads; SimCLR step of bench/throughput.py: "
        f"ResNet-18 ({stem} stem), {a.image_size} px, batch {batch_size}, two views per image, "
        f"{'bf16 autocast' if rt.amp_dtype is not None else 'fp32'}",
        f"- cache: {a.images:,} synthetic {a.image_size} px images, {nbytes / GB:.2f} GB on disk (bench/work/scale, "
        f"deleted afterwards); streamed with data.memory_budget_gb = {a.budget_gb}; the auto budget here would be "
        f"{auto_budget / GB:.1f} GB (half of the free memory)",
        f"- {a.rounds} interleaved rounds of {a.steps} steps per mode, after 2 warm-up steps; images/s includes "
        "fetching each batch",
        f"- command: `{command}`", "",
        *table, "",
        f"CPU pressure during the run (/proc/pressure/cpu, share of time some task waited for a CPU): "
        f"{cpu_pressure()}.", "",
        "Memory (peak resident set above the level before, VmHWM from /proc/self/status):", "",
        "| what | MB |", "|---|---:|",
        f"| {a.steps} streamed training steps over all {a.images:,} images (cold) | {streaming_peak.growth_mb:,.0f} |",
        f"| loading the in-memory set ({n_memory:,} images, {load_s:.1f} s) | {load_peak.growth_mb:,.0f} |",
        f"| for comparison: {a.steps} batches gathered by indexing the memory map directly | {memmap_growth:,.0f} |",
        "",
        f"Slowest streamed round against the in-memory median: **{worst_ratio:.2f}x** (goal >= 0.8x: {goal}). "
        f"Resident memory while streaming grew by {streaming_peak.growth_mb:,.0f} MB, within the "
        f"{a.budget_gb * 1024:,.0f} MB budget ({bounded}); the first cold round ran at {cold_first:,.1f} images/s.",
        "",
        f"A training step took {1000 * step_s:,.0f} ms here; fetching its batch alone took "
        + ", ".join(f"{reads[k] / (1000 * step_s):.1%} of that {k.split(':')[0]}" for k in reads) + ".",
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(report[report.index(table[0]):]))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
