"""Several processes through torchrun: one per GPU (NCCL), or on a CPU several over gloo (for testing).

    torchrun --standalone --nproc-per-node N -m engine fit DATA --run-dir RUN ...
    python -m engine fit DATA --run-dir RUN --gpus N ...       (launches the line above)

What each process does:

* Rank 0 is the run's worker as in one process: it checks the folder, holds the run's lock, decodes the
  images, reads and writes every run file (config, checkpoints, events, samples.csv) and alone fits the
  mixture and draws the map. The other ranks ("followers") write nothing: they wait until rank 0 has
  prepared the images (`Dist.open` / `Dist.join`), read the decoded cache, and then take part in every
  training step and prediction pass. Every decision taken from the run folder (is a stage done, does an
  epoch checkpoint exist, is phase (b) due) is taken by rank 0 and shared (`Dist.agree`); a follower reads
  a checkpoint only after a barrier that rank 0 passes once the file is written.
* Batches are global: `batch_size` is the batch of the whole job. Each epoch's permutation comes from
  the same seeded generator in every process, and process r trains on the r-th equal part of every
  batch (`Dist.part`), so N processes see the same batches as one process with the same batch size.
  Augmentation parameters are drawn for the whole batch and each process applies its part's, so the
  views are the same as in one process too.
* Losses are computed on the global batch. The network outputs of the parts (SimCLR and SupCon
  projections, classifier logits) are gathered from every process (`Dist.gather_with_grad`), so the
  contrastive negatives span the global batch, ELR's per-image targets are updated with the whole batch
  in every process, and every process holds the same loss value. The gather's backward hands each
  process the sum over processes of the gradient for its own rows, that is N times the one-process
  gradient of the loss; DistributedDataParallel then averages the parameter gradients over the N
  processes, which gives exactly the one-process gradient.
* BatchNorm normalises with the statistics of each process's part of the batch (DDP's default), not of
  the global batch: this is the one numerical difference from one process (besides float summation
  order). SyncBatchNorm would remove it on GPUs; it is not offered, because it needs CUDA and could not be
  tested here. Running statistics are rank 0's: DDP broadcasts them at every forward, and every
  prediction pass starts by copying rank 0's parameters and buffers into every process (`sync_from_main`).
* Prediction passes (the per-image losses, probabilities and features) are sharded: each process
  predicts a contiguous share of the images and the shares are gathered back into dataset order
  (`Dist.gather_rows`) in every process.
* The warm-up head (on precomputed features of the frozen encoder) is not sharded: every process trains
  it identically on the full, gathered features (same generators, same data: same result), as one
  process does; it costs next to nothing next to the encoder passes.

One process (no torchrun environment) never touches torch.distributed: every method of `Dist()` is then
the identity, and a run is exactly what it was before this module existed.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from engine.errors import UserError

T = TypeVar("T")

# How long a process waits in one collective. Long: the followers wait while rank 0 alone decodes the
# images (before training) or fits the mixture and draws the map (between phases), which takes minutes
# on a large set. A process that dies is noticed by torchrun at once, whatever this says.
TIMEOUT = datetime.timedelta(hours=4)
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass
class Dist:
    """This process among the run's processes. `Dist()` is the one process of an ordinary run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    opened: bool = False  # rank 0: the followers were told to start (`open`), so no stop is owed them

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ agreement
    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def agree(self, decide: Callable[[], T]) -> T:
        """decide() run on rank 0 alone, its (picklable) value returned in every process."""
        if not self.enabled:
            return decide()
        box = [decide() if self.is_main else None]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def open(self, payload: dict[str, Any]) -> None:
        """Rank 0: the images are prepared; the followers start with `payload` (see `join`)."""
        if self.enabled and self.is_main and not self.opened:
            self.opened = True
            self.agree(lambda: payload)

    def join(self) -> dict[str, Any] | None:
        """A follower: wait for rank 0's `open` (its payload) or its stop before the work began (None)."""
        return self.agree(lambda: None)

    def stop_unopened(self) -> None:
        """Rank 0 ends before `open` (a refused command): the waiting followers are told to stop."""
        if self.enabled and self.is_main and not self.opened:
            self.opened = True
            self.agree(lambda: None)

    # ------------------------------------------------------------------ sharding
    def part(self, n: int) -> slice:
        """This process's equal part of a global batch of n images (n a multiple of world_size)."""
        if n % self.world_size:
            raise ValueError(f"a batch of {n} does not split into {self.world_size} equal parts")
        b = n // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def rows(self, n: int, rank: int | None = None) -> slice:
        """The contiguous share of n dataset rows a process predicts (shares differ by at most one row)."""
        r = self.rank if rank is None else rank
        return slice(n * r // self.world_size, n * (r + 1) // self.world_size)

    def gather_with_grad(self, x: Tensor) -> Tensor:
        """Every process's equal part of a batch (B/N, ...) -> the global batch (B, ...) in rank order, with
        gradients flowing back to each process's own part (see the module docstring for the scaling)."""
        return _GatherWithGrad.apply(x) if self.enabled else x

    def gather_rows(self, x: Tensor, n: int) -> Tensor:
        """Each process's `rows(n)` of a result -> all n rows in dataset order, in every process. No gradient."""
        if not self.enabled:
            return x
        most = -(-n // self.world_size)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        sizes = [self.rows(n, r).stop - self.rows(n, r).start for r in range(self.world_size)]
        return torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)])

    def sync_from_main(self, *modules: nn.Module) -> None:
        """Every process takes rank 0's parameters and buffers (BatchNorm statistics included)."""
        if not self.enabled:
            return
        for module in modules:
            for t in module.state_dict().values():  # detached views of the module's own tensors
                if not isinstance(t, Tensor):
                    continue
                if t.is_contiguous():
                    tdist.broadcast(t, src=0)
                else:  # channels_last weights
                    buf = t.contiguous()
                    tdist.broadcast(buf, src=0)
                    t.copy_(buf)

    def wrap(self, net: nn.Module, method: str, device: torch.device) -> Callable[[Tensor], Tensor]:
        """`net.<method>` as a training step calls it: through DistributedDataParallel across processes.

        Call it after `set_trainable`: DDP synchronises the gradients of the parameters that require one
        when it is built, and copies rank 0's parameters and buffers into every process.
        """
        if not self.enabled:
            return getattr(net, method)
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(_Method(net, method), device_ids=[device.index] if device.type == "cuda" else None)


class _Method(nn.Module):
    """One method of a network as a module's forward, which is what DistributedDataParallel hooks."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.net, self.method)(x)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward gives each process the gradient of its own rows summed over
    the processes (a reduce-scatter, written as an all-reduce: gloo has no reduce-scatter).

    Written here because torch.distributed.nn.functional.all_gather, which does the same, is deprecated in
    torch 2.x and emulates the reduce-scatter with all_to_all outside NCCL."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        tdist.all_reduce(grad)
        start = tdist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


# ============================================================================================ launch


def launched() -> bool:
    """This process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> Dist:
    """The processes of a torchrun launch with their process group set up, or `Dist()` for one process.

    One group serves both kinds of tensors: gloo for CPU tensors and, where CUDA is present, NCCL for CUDA
    tensors, so a run on the CPU of a GPU machine works too. Each process uses the GPU of its LOCAL_RANK.
    """
    if not launched():
        return Dist()
    missing = [v for v in LAUNCH_VARIABLES if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start several processes with torchrun "
                        "(python -m torch.distributed.run) or `fit --gpus N`")
    dist = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    cuda = torch.cuda.is_available()
    if cuda and dist.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(dist.local_rank)
    tdist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    return dist


def finish(dist: Dist, *, ok: bool) -> None:
    """The end of a process: after a success every process meets once more; then the group is closed.
    After a failure nobody waits for the others (torchrun ends them)."""
    if not dist.enabled or not tdist.is_initialized():
        return
    try:
        dist.stop_unopened()
        if ok:
            tdist.barrier()
    finally:
        tdist.destroy_process_group()


def check_batches(sizes: dict[str, int], dist: Dist) -> None:
    """Refuse batch sizes that do not split into one equal part per process."""
    for key, size in sizes.items():
        if size % dist.world_size:
            lower = size - size % dist.world_size or dist.world_size
            raise UserError(f"{key} = {size} does not split into {dist.world_size} equal parts, one per process "
                            f"(the batch size is the global batch); use a multiple of {dist.world_size}, "
                            f"e.g. --batch-size {lower}")


def global_batch(batch_size: int, n: int, dist: Dist) -> int:
    """The global batch a training loop uses: `batch_size`, or the whole set when it is smaller (then rounded
    down to a multiple of the process count, which a smaller set need not be)."""
    b = min(batch_size, n)
    return b - b % dist.world_size if b >= dist.world_size else b
