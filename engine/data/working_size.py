"""The working size: the square size every image is decoded to, chosen from the images and the device.

`data.image_size = AUTO_SIZE` (0, the device profiles' default) is resolved when a new run starts, from the
shorter side of the images (the median over an even sample of the files' headers) and the device:

    size = clamp(native side rounded down to a multiple of 8, FLOOR, the device's CAP)

* CPU cap 32 px: measured on Imagenette 25 % (2,000 photos, 5 minutes each on 2 CPU cores), 32 px reached
  F1 0.527 / AUROC 0.776 against 0.413 / 0.700 at 64 px and 0.420 / 0.723 at 96 px — a larger size
  cannot train enough epochs in minutes (bench/results/image_size_imagenette25-200pc.md).
* GPU cap 96 px: where an epoch costs seconds the epochs are not what limits, and at equal epochs the
  same measurement put 96 px ahead of 64 px (AUROC 0.723 against 0.700). Not yet timed on a GPU.
* Floor 32 px: the ResNet trunk divides its input by 32, so smaller images are enlarged to 32 rather
  than reaching the last block as less than one pixel.
* Images already smaller than the cap are not enlarged beyond their own size (above the floor): a
  48 px data set works at 48 px on a GPU, never at an upscaled 96.

The resolved size is what config.json records (a run must decode the same pixels when it resumes), and
the reason is one line of the run's events (`size`), which the Train page shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import AUTO_SIZE
from engine.data.decode import DecodeError, open_image

__all__ = ["AUTO_SIZE", "WorkingSize", "device_cap", "native_side", "resolve", "working_size"]
FLOOR = 32
CAPS = {"cpu": 32, "cuda": 96}
SAMPLED = 256  # headers read: the median of 256 shorter sides moves by a pixel or two at most
_STEP = 8


@dataclass(frozen=True)
class WorkingSize:
    size: int
    native: int | None  # median shorter side of the sampled images, None when none could be read
    device_type: str

    def reason(self) -> str:
        cap = device_cap(self.device_type)
        device = "GPU" if self.device_type == "cuda" else "CPU"
        if self.native is None:
            return f"working size {self.size} px: no image size could be read, so the {device}'s {cap} px"
        seen = f"the images' shorter side is about {self.native} px"
        if self.size == cap and self.native >= cap:
            why = f"the {device}'s best measured size is {cap} px"
        elif self.size == FLOOR and self.native < FLOOR:
            why = f"smaller images are enlarged to {FLOOR} px, the least the network takes"
        else:
            why = "images are not enlarged beyond their own size"
        return f"working size {self.size} px ({seen}; {why})"


def device_cap(device_type: str) -> int:
    return CAPS.get(device_type, CAPS["cpu"])


def working_size(native: int | None, device_type: str) -> int:
    """The size for images whose shorter side is `native` px on `device_type` ("cpu" or "cuda")."""
    cap = device_cap(device_type)
    if native is None:
        return cap
    return int(max(FLOOR, min(cap, native // _STEP * _STEP)))


def native_side(root: Path, paths: Sequence[str], *, sampled: int = SAMPLED) -> int | None:
    """Median shorter side (px) of up to `sampled` evenly spaced images of `paths` (relative to `root`),
    from their headers only; unreadable files are left out (the prepare stage reports them)."""
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, min(sampled, len(paths))).round().astype(int))
    sides: list[int] = []
    for i in picks:
        try:
            with open_image(Path(root) / paths[i]) as im:
                sides.append(min(im.size))
        except (DecodeError, OSError):
            continue
    return int(np.median(sides)) if sides else None


def resolve(root: Path, paths: Sequence[str], device_type: str) -> WorkingSize:
    native = native_side(root, paths)
    return WorkingSize(working_size(native, device_type), native, device_type)
