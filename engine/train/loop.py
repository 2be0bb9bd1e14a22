"""The epoch loop every training stage shares: shuffling, per-epoch resume checkpoints, progress.

A stage supplies `step(index, global_step) -> loss` and the modules whose state must survive a kill.
After every epoch the loop writes `<stage>.last.pt` (modules, optimiser, RNG states, epoch, history);
a run killed at any moment restarts from the last finished epoch with the same generator states
(bit-identical on CPU; on CUDA the augmentation's op order comes from the global CPU generator).

Under torchrun every process runs this loop over the same global batches (the stage's step trains on its
own part, engine.train.distributed); rank 0 alone writes the epoch checkpoints, and every process reads
the one to resume from after a barrier, so all of them continue from the same epoch and states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.runs.progress import WHOLE, Progress, Span
from engine.runs.seeds import stream_seed
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.train.distributed import Dist
from engine.train.trainset import epoch_batches, steps_per_epoch


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float
    images_per_s: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Rng:
    """The two generators a stage draws from: batch order (CPU) and augmentation (training device)."""

    order: torch.Generator
    augment: torch.Generator

    @classmethod
    def for_stream(cls, run_seed: int, stream: str, device: torch.device | str) -> Rng:
        """The generators of the named stream: `<stream>/order` and `<stream>/augment` (engine.runs.seeds)."""
        order = torch.Generator().manual_seed(stream_seed(run_seed, f"{stream}/order"))
        augment = torch.Generator(device=device).manual_seed(stream_seed(run_seed, f"{stream}/augment"))
        return cls(order, augment)

    def state(self) -> dict[str, torch.Tensor]:
        return {"order": self.order.get_state(), "augment": self.augment.get_state()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.order.set_state(state["order"].cpu())
        self.augment.set_state(state["augment"].cpu())  # generator states are CPU byte tensors, even for CUDA


def run_epochs(
    *,
    stage: str,
    epochs: int,
    n: int,
    batch_size: int,
    rng: Rng,
    step: Callable[[torch.Tensor, int], float],
    modules: dict[str, Stateful],
    last_ckpt: Path,
    progress: Progress,
    lr_at: Callable[[int], float] | None = None,
    end_of_epoch: Callable[[int], dict[str, float]] | None = None,
    drop_last: bool = True,
    views: int = 1,
    device: torch.device | str = "cpu",
    span: Span = WHOLE,
    dist: Dist | None = None,
) -> list[EpochRecord]:
    """Run `epochs` epochs of `step`, resuming from `last_ckpt` when it exists.

    Args:
        step: trains on one batch of dataset indices; gets the global step (for the LR schedule) and
            returns the batch loss as a float.
        modules: name -> object with state_dict/load_state_dict (networks, optimiser, loss buffers).
        end_of_epoch: optional evaluation after each epoch; its metrics go to events.jsonl.
        views: images the network sees per dataset image (2 for contrastive stages), for images/s.
        span: steps of the stage before and after this loop, for a stage trained in parts (one count).
        dist: the run's processes; `step` gets the global batch and trains on this process's part of it.
    """
    dist = dist or Dist()
    per_epoch = steps_per_epoch(n, batch_size, drop_last=drop_last)
    dist.barrier()  # rank 0 has finished writing whatever epoch checkpoint is there ...
    history, start = _resume(last_ckpt, modules, rng, device)
    dist.barrier()  # ... and writes the next one only once every process has read it
    # A resumed stage continues its count where the killed run left it (33/48), not from 0 of what is left.
    progress.stage_start(stage, total=span.before + per_epoch * epochs + span.after,
                         done=span.before + per_epoch * min(start, epochs))
    if dist.is_main and history and not _event_logged(progress, stage, history[-1].epoch, epochs):
        _log_epoch(progress, stage, epochs, history[-1], lr_at, per_epoch)  # the one a kill could have lost
    for epoch in range(start, epochs):
        t0, seen, total_loss, count = time.perf_counter(), 0, 0.0, 0
        for i, index in enumerate(epoch_batches(n, batch_size, rng.order, drop_last=drop_last)):
            loss = step(index, epoch * per_epoch + i)
            total_loss, count, seen = total_loss + loss, count + 1, seen + len(index) * views
            progress.advance(1, images=len(index) * views, loss=loss)
        seconds = time.perf_counter() - t0
        extra = end_of_epoch(epoch) if end_of_epoch else {}
        record = EpochRecord(epoch + 1, total_loss / max(count, 1), seconds, seen / max(seconds, 1e-9), extra)
        history.append(record)
        if dist.is_main:  # before the event: a logged epoch is never redone
            _save(last_ckpt, modules, rng, epoch + 1, history)
        _log_epoch(progress, stage, epochs, record, lr_at, per_epoch)
    if span.after == 0:  # else the stage's next part continues the count
        progress.stage_end()
    return history


def _log_epoch(progress: Progress, stage: str, epochs: int, record: EpochRecord,
               lr_at: Callable[[int], float] | None, per_epoch: int) -> None:
    lr = lr_at(record.epoch * per_epoch - 1) if lr_at else None
    progress.epoch(stage, record.epoch, epochs, loss=record.loss, images_per_s=round(record.images_per_s, 1),
                   seconds=round(record.seconds, 2), **({"lr": lr} if lr is not None else {}), **record.extra)


def _event_logged(progress: Progress, stage: str, epoch: int, epochs: int) -> bool:
    """Whether the last epoch event of `stage` in events.jsonl is `epoch` of `epochs`. The checkpoint is
    written before the event, so a kill between the two leaves the checkpoint's last epoch unlogged; only
    that one (every earlier event was written before the next epoch's checkpoint). No run folder: True."""
    if progress.run is None:
        return True
    last = next((e for e in reversed(progress.run.read_events())
                 if e.get("kind") == "epoch" and e.get("stage") == stage), None)
    return last is not None and last.get("epoch") == epoch and last.get("epochs") == epochs


def _save(path: Path, modules: dict[str, Stateful], rng: Rng, epoch: int, history: list[EpochRecord]) -> None:
    state: dict[str, Any] = {name: m.state_dict() for name, m in modules.items()}
    state["_rng"] = rng.state()
    state["_epoch"] = epoch
    state["_history"] = [
        {"epoch": h.epoch, "loss": h.loss, "seconds": h.seconds, "images_per_s": h.images_per_s, "extra": h.extra}
        for h in history
    ]
    save_checkpoint(path, state)


def _resume(path: Path, modules: dict[str, Stateful], rng: Rng, device: torch.device | str) -> tuple[list[EpochRecord], int]:
    if not Path(path).exists():
        return [], 0
    state = load_checkpoint(path, device)
    for name, m in modules.items():
        m.load_state_dict(state[name])
    rng.load(state["_rng"])
    history = [EpochRecord(**h) for h in state["_history"]]
    return history, int(state["_epoch"])
