"""Shared pieces of the benchmarks: real data written once, and a description of the machine."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TO_FOLDER = ROOT.parent / "shared" / "data" / "to_folder.py"
DATA = ROOT / "bench" / "data"  # git-ignored
RESULTS = ROOT / "bench" / "results"


def ensure_cifar10(folder: Path, *, per_class: int = 500, split: str = "train") -> Path:
    """CIFAR-10 PNG class folders (clean labels) from ../shared/data, written once.

    Written into a temporary sibling and renamed, so an interrupted run leaves nothing half-done.
    """
    expected = per_class * 10
    if folder.is_dir() and sum(1 for _ in folder.glob("*/*.png")) == expected:
        return folder
    if not TO_FOLDER.exists():
        raise SystemExit(f"{TO_FOLDER} not found: it writes the CIFAR-10 PNGs (see ../shared/data/README.md)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    cmd = [sys.executable, str(TO_FOLDER), "cifar10", "--split", split, "--per-class", str(per_class),
           "--out", str(tmp / "d")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    os.replace(tmp / "d", folder)
    tmp.rmdir()
    return folder


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_lines() -> list[str]:
    """Markdown bullet lines: date, CPU, cores, load, GPU."""
    gpu = gpu_name()
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu_model()}, {usable_cores()} cores usable, load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"- GPU: {gpu or 'none'}",
        f"- Python {platform.python_version()}",
    ]
