"""(a1) SimCLR pre-training of the encoder: two augmented views per image, NT-Xent, labels unused.

Under torchrun each process projects its part of the global batch and NT-Xent runs on the projections
gathered from every process: an image's negatives are the other 2B - 2 views of the whole global batch,
as in one process (engine.train.distributed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import PretrainConfig
from engine.method.augment import BatchAugment, two_views
from engine.method.losses import nt_xent
from engine.method.models import Network, set_trainable
from engine.runs.progress import Progress
from engine.train.device import Runtime, autocast, oom_guard
from engine.train.distributed import global_batch
from engine.train.loop import EpochRecord, Rng, run_epochs
from engine.train.schedule import cosine_lr, scaled_lr, set_lr, sgd
from engine.train.trainset import TrainSet, steps_per_epoch


def pretrain_simclr(
    net: Network,
    data: TrainSet,
    cfg: PretrainConfig,
    aug: BatchAugment,
    rt: Runtime,
    *,
    rng: Rng,
    last_ckpt: Path,
    progress: Progress,
) -> list[EpochRecord]:
    """Train encoder + projection head with NT-Xent for cfg.epochs epochs (resumable)."""
    set_trainable(net, encoder=True, projector=True, classifier=False)
    net.train()
    dist = rt.dist
    project = dist.wrap(net, "project", rt.device)  # DistributedDataParallel across processes
    batch_size = global_batch(cfg.batch_size, len(data), dist)
    base_lr = scaled_lr(cfg.lr, batch_size)
    opt = sgd(net.parameters(), lr=base_lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch(len(data), batch_size, drop_last=True)

    def lr_at(step: int) -> float:
        return cosine_lr(base_lr, step, total, warmup_steps=min(total // 10, 50))

    def step(index: torch.Tensor, global_step: int) -> float:
        set_lr(opt, lr_at(global_step))
        part = dist.part(len(index))  # this process's images of the global batch
        v0, v1 = two_views(aug, data.batch(index[part]), rng.augment, within=(part.start, len(index)))
        with oom_guard(batch_size, "pre-training"):
            with autocast(rt):
                # One forward over both views: BatchNorm sees 2B images, as in SupContrast's recipe.
                z = project(torch.cat([v0, v1]))
            z0, z1 = z.float().chunk(2)
            z0, z1 = dist.gather_with_grad(z0), dist.gather_with_grad(z1)  # the global batch's projections
            loss = nt_xent(z0, z1, temperature=cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    return run_epochs(stage="pretrain", epochs=cfg.epochs, n=len(data), batch_size=batch_size, rng=rng, step=step,
                      modules={"net": net, "opt": opt}, last_ckpt=last_ckpt, progress=progress, lr_at=lr_at,
                      views=2, device=rt.device, dist=dist)
