"""Optimiser and learning-rate schedule shared by every training stage."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def scaled_lr(lr_per_256: float, batch_size: int) -> float:
    """Learning rates are given for a batch of 256 and scaled linearly (Goyal et al. 2017, as in the paper's code)."""
    return lr_per_256 * batch_size / 256


def sgd(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in params if p.requires_grad], lr=lr, momentum=0.9, weight_decay=weight_decay)


def cosine_lr(base_lr: float, step: int, total_steps: int, *, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Linear warm-up for `warmup_steps`, then cosine decay from base_lr to floor over the rest."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
