"""The decoded training images, held where they fit: on the GPU, in host memory, or streamed from the cache.

Why not a DataLoader: the images are already decoded (engine.data.cache), so a batch is one gather of
uint8 rows; augmentation then runs batched on the training device (engine.method.augment). On a GPU this
removes every per-epoch host->device copy (airbench style); on a CPU it removes the per-image Python
and PIL work that dominates a DataLoader pipeline at small image sizes.

Where the images live is decided once, by `TrainSet.from_numpy`, when a run starts:

    gpu       CUDA only: the whole (N, 3, S, S) uint8 tensor on the GPU, when it fits the GPU budget
    memory    the whole tensor in host memory, when it fits the host budget
    streamed  nothing held: each batch's rows are read from the cache file (RUN/data/images.npy), so memory
              stays at a batch or two whatever N is (1,000,000 images at 96 px are 28 GB)

The budget is `data.memory_budget_gb`, or when that is 0 (auto) half of the memory free at that place
(the GPU's for `gpu`, the host's for `memory`) measured at that moment. Every placement returns the
same uint8 batch for the same index, so training is bit-identical whichever one a run gets.
"""

from __future__ import annotations

import mmap
import os
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Placement = Literal["gpu", "memory", "streamed"]

# Auto budget: the images may take this fraction of the memory free at their place, the rest is left to
# the network, its activations and everything else running on the machine.
_AUTO_BUDGET_FRACTION = 0.5
_GIB = 2**30
_LOAD_CHUNK_BYTES = 64 * 2**20  # filling a resident tensor a chunk at a time bounds the peak to the tensor itself
_LOAD_PROGRESS_BYTES = _GIB  # loads smaller than this take well under the few seconds a progress bar is for


@dataclass
class TrainSet:
    store: _Store  # the (N, S, S, 3) images, wherever they are held
    labels: torch.Tensor  # (n,) int64 on the training device, one per row of this set
    device: torch.device
    rows: torch.Tensor | None = None  # (n,) rows of `store` this set holds (a subset shares the images)

    @classmethod
    def from_numpy(
        cls, images_nhwc: np.ndarray, labels: np.ndarray, device: torch.device, *, memory_budget_gb: float = 0.0
    ) -> TrainSet:
        """The images of a cache (N, S, S, 3) uint8, usually the read-only memmap of images.npy.

        memory_budget_gb: the most memory the images may take where they are held; 0 = auto (half of
        what is free there now). Above it on the GPU they are kept in host memory, above it there too
        they are streamed from the cache file.
        """
        device = torch.device(device)
        source = _RowReader.of(images_nhwc)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        placement = choose_placement(source.nbytes, device, memory_budget_gb)
        if placement == "streamed":
            store: _Store = _Streamed(source, device)
        else:
            store = _Resident(_load(source, torch.device(device if placement == "gpu" else "cpu")), device)
        return cls(store, y.to(device), device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return self.store.image_size

    @property
    def placement(self) -> Placement:
        return self.store.placement

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) on the training device for positions `index` of this set."""
        index = index.to(self.store.index_device)
        if self.rows is not None:
            index = self.rows.index_select(0, index)
        return self.store.gather(index)

    def subset(self, keep: np.ndarray) -> TrainSet:
        """The images where `keep` is True, as a view: no copy of the images."""
        idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.int64)
        at = self.store.index_device
        rows = idx.to(at) if self.rows is None else self.rows.index_select(0, idx.to(at))
        return TrainSet(self.store, self.labels.index_select(0, idx.to(self.labels.device)), self.device, rows)


# ============================================================================================ placement


def choose_placement(nbytes: int, device: torch.device, memory_budget_gb: float = 0.0) -> Placement:
    """Where `nbytes` of images go on `device` under `memory_budget_gb` (0 = auto, see the module doc)."""
    if memory_budget_gb < 0:
        raise ValueError(f"memory_budget_gb must be >= 0 (0 = auto), got {memory_budget_gb}")
    explicit = int(memory_budget_gb * _GIB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= (explicit or _AUTO_BUDGET_FRACTION * free) and nbytes < free:
            return "gpu"
    if nbytes <= (explicit or _AUTO_BUDGET_FRACTION * free_host_bytes()):
        return "memory"
    return "streamed"


def free_host_bytes() -> int:
    """Memory this process could still get: MemAvailable, lowered to a container's limit if it has one."""
    free = _meminfo_available()
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0  # unknown: stream, the placement that cannot run out of memory


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup memory limit (v2, then v1); reclaimable page cache counts as room."""
    for limit_file, usage_file, stat_file, inactive_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
         "inactive_file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
    ):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 2**60:  # no limit
                return None
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines())
            return max(0, int(raw) - int(Path(usage_file).read_text()) + int(stat.get(inactive_key, 0)))
        except (OSError, ValueError):
            continue
    return None


# ============================================================================================ stores


class _RowReader:
    """Reads rows of an (N, S, S, 3) uint8 array into a caller's buffer.

    A cache file is read with positioned reads (os.preadv), not through its memory map: every page read
    through a mapping joins this process's resident set, so an epoch over a 28 GB cache would show 28 GB
    resident — reclaimable, but counted against the process and indistinguishable from a leak. pread
    leaves the caching to the kernel's page cache. An array that is not a file is gathered directly.
    """

    def __init__(self, array: np.ndarray, path: str | None, offset: int) -> None:
        if array.ndim != 4 or array.shape[3] != 3 or array.dtype != np.uint8:
            raise ValueError(f"images must be (N, S, S, 3) uint8, got {array.shape} {array.dtype}")
        self.shape: tuple[int, int, int, int] = tuple(int(d) for d in array.shape)  # type: ignore[assignment]
        self.row_bytes = int(np.prod(self.shape[1:]))
        self.offset = offset
        self._array = None if path else array
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0)) if path else None
        if self._fd is not None:
            weakref.finalize(self, os.close, self._fd)

    @classmethod
    def of(cls, images: np.ndarray) -> _RowReader:
        # Only a whole mapped array is read from its file: a slice of a memmap keeps its parent's `offset`.
        if isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.filename:
            return cls(images, str(images.filename), int(images.offset))
        return cls(np.asarray(images), None, 0)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[k] = images[rows[k]]. Reads in file order (sorted offsets read faster from a disk), one call
        per run of rows that are consecutive both in the file and in `out`."""
        if not len(rows):
            return
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"image rows out of range [0, {self.shape[0]})")
        if self._fd is None:
            np.take(self._array, rows, axis=0, out=out)
            return
        order = np.argsort(rows, kind="stable")
        in_file = rows[order]
        breaks = np.flatnonzero((np.diff(in_file) != 1) | (np.diff(order) != 1)) + 1
        flat = out.reshape(len(rows), self.row_bytes)
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            slot = int(order[start])
            _pread_into(self._fd, flat[slot:slot + int(stop - start)], self.offset + int(in_file[start]) * self.row_bytes)


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while len(view):
        got = os.preadv(fd, [view], offset) if hasattr(os, "preadv") else _pread_copy(fd, view, offset)
        if got <= 0:
            raise OSError(f"the image cache file ended early (at byte {offset}): run prepare again")
        view, offset = view[got:], offset + got


def _pread_copy(fd: int, view: memoryview, offset: int) -> int:  # platforms without preadv
    data = os.pread(fd, len(view), offset)
    view[:len(data)] = data
    return len(data)


def _host_buffer(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    # Pinned memory lets the host->GPU copy run asynchronously; torch's caching host allocator reuses these
    # buffers and keeps each one alive until its copy has finished.
    return torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda")


def _nhwc_to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, S, S, 3) host uint8 -> contiguous (B, 3, S, S) on `device` (permuted after the copy: on a GPU)."""
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()


def _load(source: _RowReader, place: torch.device) -> torch.Tensor:
    """The whole (N, 3, S, S) tensor on `place`, filled a chunk at a time: the peak is the tensor itself,
    never a second full copy in host memory."""
    n, s = len(source), source.shape[1]
    x = torch.empty((n, 3, s, s), dtype=torch.uint8, device=place)
    chunk = max(1, _LOAD_CHUNK_BYTES // source.row_bytes)
    bar = None
    if source.nbytes >= _LOAD_PROGRESS_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc="load images", file=sys.stderr, leave=False)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        buf = _host_buffer((len(rows), s, s, 3), place)
        source.read(rows, buf.numpy())
        x[start:start + len(rows)].copy_(buf.to(place, non_blocking=True).permute(0, 3, 1, 2))
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return x


class _Store:
    placement: Placement
    index_device: torch.device  # where row indices live for gather()
    image_size: int

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) on the training device for cache rows `rows` (on index_device)."""
        raise NotImplementedError


class _Resident(_Store):
    def __init__(self, images: torch.Tensor, device: torch.device) -> None:
        self.images, self.device = images, device  # (N, 3, S, S) uint8 on the GPU or in host memory
        self.placement = "gpu" if images.device.type == "cuda" else "memory"
        self.index_device = images.device
        self.image_size = int(images.shape[-1])

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        if self.images.device == self.device:
            return self.images.index_select(0, rows)
        out = _host_buffer((len(rows), *self.images.shape[1:]), self.device)
        torch.index_select(self.images, 0, rows, out=out)
        return out.to(self.device, non_blocking=True)


class _Streamed(_Store):
    placement = "streamed"

    def __init__(self, source: _RowReader, device: torch.device) -> None:
        self.source, self.device = source, device
        self.index_device = torch.device("cpu")
        self.image_size = source.shape[1]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        buf = _host_buffer((len(rows), *self.source.shape[1:]), self.device)
        self.source.read(rows.numpy(), buf.numpy())
        return _nhwc_to_device(buf, self.device)


# ============================================================================================ batches


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


def ordered_batches(n: int, batch_size: int, *, start: int = 0) -> Iterator[torch.Tensor]:
    """Indices start .. n - 1 in order, batch_size at a time."""
    for i in range(start, n, batch_size):
        yield torch.arange(i, min(i + batch_size, n))

