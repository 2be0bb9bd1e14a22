"""Where training runs: device choice, seeding, precision, and clear out-of-memory errors."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.train.distributed import Dist


class GpuOutOfMemory(RuntimeError):
    """Raised instead of a CUDA OOM traceback, with a message the user can act on."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype of the contrastive stages (SimCLR, SupCon)
    channels_last: bool
    classifier_amp_dtype: torch.dtype | None = None  # autocast dtype of the classifier stages
    dist: Dist = field(default_factory=Dist)  # this process among the run's processes (engine.train.distributed)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def alone(self) -> Runtime:
        """The same device and numerics for work this process does without the others (rank 0's test
        accuracy, say): nothing in it waits for another process."""
        return replace(self, dist=Dist())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where oneDNN runs bf16 fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def make_runtime(name: str, precision: str = "auto", dist: Dist | None = None) -> Runtime:
    """Device plus numerics. precision "auto": bf16 autocast on CUDA everywhere; on a CPU with native
    bf16 (AVX512-BF16/AMX) for the contrastive stages only, fp32 elsewhere.

    Why the split on CPU: bf16 makes SimCLR steps ~1.4x faster here (bench/results/throughput_cpu.md)
    and those stages stay bit-for-bit repeatable, while the classifier stages in bf16 were not
    repeatable run to run (tiny batches, high learning rate) — and CPU runs must be deterministic.
    "bf16" forces bf16 in every stage (faster, not repeatable on CPU), "fp32" turns it off. Losses,
    predictions and the mixture are always fp32.

    dist: the run's processes under torchrun; on CUDA each process trains on the GPU of its local rank.
    """
    dist = dist or Dist()
    device = resolve_device(name)
    if dist.enabled and device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {dist.rank} of {dist.world_size} has local rank {dist.local_rank}, but only "
                            f"{torch.cuda.device_count()} CUDA GPU(s) are visible: start at most one process per GPU")
        device = torch.device("cuda", dist.local_rank)
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = torch.bfloat16
    if precision == "fp32":
        contrastive, classifier = None, None
    elif precision == "bf16" or device.type == "cuda":
        contrastive, classifier = bf16, bf16
    else:
        contrastive, classifier = (bf16 if cpu_has_native_bf16() else None), None
    # channels_last helps oneDNN convolutions on CPU too (+~25 % per ResNet-18 step here).
    return Runtime(device, contrastive, channels_last=True, classifier_amp_dtype=classifier, dist=dist)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (global generators; stages draw from their own seeded ones too)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast(rt: Runtime, *, classifier: bool = False) -> contextlib.AbstractContextManager:
    dtype = rt.classifier_amp_dtype if classifier else rt.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=dtype)


@contextlib.contextmanager
def oom_guard(batch_size: int, stage: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one sentence that says what to change."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        smaller = max(2, batch_size // 2)
        raise GpuOutOfMemory(
            f"GPU out of memory during {stage} with batch size {batch_size}. "
            f"Try a smaller batch, e.g. --batch-size {smaller} (or a smaller --image-size)."
        ) from e


def describe_devices() -> dict:
    """What `python -m engine devices --json` prints; the app shows it on the Train page."""
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
    return {
        "cuda": bool(devices),
        "devices": devices,
        "default": "cuda" if devices else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
