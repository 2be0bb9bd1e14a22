"""The decoded training images as one tensor, resident on the training device when it fits.

Why not a DataLoader: the images are already decoded (engine.data.cache), so a batch is one index_select
on a uint8 tensor; augmentation then runs batched on the same device (engine.method.augment). On a GPU this
removes every per-epoch host->device copy (airbench style); on a CPU it removes the per-image Python
and PIL work that dominates a DataLoader pipeline at small image sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

# Keep the dataset on the GPU only if it leaves this fraction of free memory for the network.
_GPU_RESIDENT_FRACTION = 0.4


@dataclass
class TrainSet:
    images: torch.Tensor  # (N, 3, S, S) uint8, on `device` when it fits there, else in host memory
    labels: torch.Tensor  # (n,) int64 on the training device, one per row of this set
    device: torch.device
    rows: torch.Tensor | None = None  # (n,) rows of `images` this set holds (a subset shares the images)

    @classmethod
    def from_numpy(cls, images_nhwc: np.ndarray, labels: np.ndarray, device: torch.device) -> TrainSet:
        with warnings.catch_warnings():  # the cache is a read-only memmap; permute+contiguous copies it once
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.asarray(images_nhwc)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if x.numel() < _GPU_RESIDENT_FRACTION * free:
                x = x.to(device)
        return cls(x, y.to(device), device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) on the training device for positions `index` of this set."""
        if self.rows is not None:
            index = self.rows.index_select(0, index.to(self.rows.device))
        if self.images.device == self.device:
            return self.images.index_select(0, index.to(self.images.device))
        return self.images.index_select(0, index.cpu()).to(self.device, non_blocking=True)

    def subset(self, keep: np.ndarray) -> TrainSet:
        """The images where `keep` is True, as a view: no copy of the image tensor."""
        idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.int64)
        rows = idx if self.rows is None else self.rows.index_select(0, idx.to(self.rows.device)).cpu()
        return TrainSet(self.images, self.labels.index_select(0, idx.to(self.labels.device)), self.device,
                        rows.to(self.device))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool) -> Iterator[torch.Tensor]:
    """Index tensors of one shuffled epoch. drop_last keeps BatchNorm away from 1-image batches."""
    perm = torch.randperm(n, generator=generator)
    batch_size = min(batch_size, n)
    stop = n - (n % batch_size) if drop_last else n
    for i in range(0, stop, batch_size):
        yield perm[i:i + batch_size]


def steps_per_epoch(n: int, batch_size: int, *, drop_last: bool) -> int:
    batch_size = min(batch_size, n)
    return n // batch_size if drop_last else -(-n // batch_size)


def ordered_batches(n: int, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, n, batch_size):
        yield torch.arange(i, min(i + batch_size, n))
