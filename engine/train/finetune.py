"""(b2) weighted supervised contrastive fine-tuning on pseudo-labels, (b3) targets for a fresh head.

Weights follow the paper: a second Gaussian mixture, fitted on each image's loss against its own
pseudo-label, gives the probability that the pseudo-label is right (the paper's published code does so).
Human review overrides the machine: a decided image trains with its decided label and weight 1, and
a discarded image is left out of training altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import FinetuneConfig, SplitConfig
from engine.errors import UserError
from engine.method.augment import BatchAugment, two_views
from engine.method.holdout import check_rows
from engine.method.losses import weighted_supcon
from engine.method.models import Network, set_trainable
from engine.method.selection import fit_gmm_split, normalise_losses
from engine.review.decisions import Decision
from engine.review.trusted import trusted_labels
from engine.runs.progress import Progress
from engine.train.classify import per_sample_ce
from engine.train.device import Runtime, autocast, oom_guard
from engine.train.distributed import global_batch
from engine.train.loop import EpochRecord, Rng, run_epochs
from engine.train.schedule import cosine_lr, scaled_lr, set_lr, sgd
from engine.train.trainset import TrainSet, steps_per_epoch


@dataclass(frozen=True)
class FinetuneTargets:
    labels: np.ndarray  # (N,) int64 training label: decided label, else the phase-(a) pseudo-label
    weights: np.ndarray  # (N,) float32 in [min_weight, 1]: 1 for decided images
    keep: np.ndarray  # (N,) bool, False for discarded images and for the held-out check
    n_decided: int
    n_discarded: int
    # (N,) bool: reviewed images held out of phase (b) to check it against (engine.method.holdout); None: none
    check: np.ndarray | None = None

    @property
    def n_check(self) -> int:
        return 0 if self.check is None else int(self.check.sum())


def finetune_targets(
    probs: np.ndarray,
    paths: tuple[str, ...],
    classes: tuple[str, ...],
    decisions: dict[str, Decision],
    split_cfg: SplitConfig,
    *,
    given: np.ndarray,
    min_weight: float,
    seed: int,
    check_share: float = 0.0,
    check_seed: int = 0,
) -> FinetuneTargets:
    """Training labels and SupCon weights for phase (b) from phase-(a) probabilities and decisions.

    given: (N,) the run's given label indices. A `keep` trains on the image's given label in this run,
    whatever label the decision stored (a decision remembered from a run where the file had another label
    still means "this run's label is right"); `relabel` trains on its label; `discard` leaves the image out.
    check_share: the share of the reviewed images held out of training to check phase (b) against
    (engine.method.holdout), drawn with `check_seed`.
    """
    pseudo = probs.argmax(axis=1)
    trusted = trusted_labels(paths, given, classes, decisions)
    # Fitted on the undecided images only: decided ones weigh 1 and discarded ones do not train.
    split = fit_gmm_split(normalise_losses(per_sample_ce(probs, pseudo), split_cfg.scale),
                          threshold=split_cfg.threshold, seed=seed, max_iter=split_cfg.max_iter, tol=split_cfg.tol,
                          reg_covar=split_cfg.reg_covar, covariance=split_cfg.covariance, fit_on=trusted.undecided)
    labels = np.where(trusted.decided, trusted.labels, pseudo).astype(np.int64)
    weights = np.where(trusted.decided, 1.0, np.maximum(split.clean_prob.astype(np.float32), min_weight))
    check = check_rows(trusted.decided, check_share, seed=check_seed)
    keep = trusted.trains & ~check
    n_decided, n_discarded = int(trusted.decided.sum()), int(trusted.discarded.sum())
    return FinetuneTargets(labels, weights.astype(np.float32), keep, n_decided, n_discarded, check=check)


def finetune_supcon(
    net: Network,
    data: TrainSet,
    targets: FinetuneTargets,
    cfg: FinetuneConfig,
    aug: BatchAugment,
    rt: Runtime,
    *,
    rng: Rng,
    last_ckpt: Path,
    progress: Progress,
) -> list[EpochRecord]:
    """Train encoder + projection head with the weighted supervised contrastive loss (eq. 8).

    Under torchrun the loss runs on the projections gathered from every process, with the labels and
    weights of the whole global batch: positives and negatives span it, as in one process."""
    set_trainable(net, encoder=True, projector=True, classifier=False)
    net.train()
    dist = rt.dist
    project = dist.wrap(net, "project", rt.device)  # DistributedDataParallel across processes
    kept = np.flatnonzero(targets.keep)
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} image(s) are not discarded; fine-tuning needs at least two")
    sub = data.subset(targets.keep)
    labels = torch.as_tensor(targets.labels[kept], device=rt.device)
    weights = torch.as_tensor(targets.weights[kept], device=rt.device)
    batch_size = global_batch(cfg.batch_size, len(sub), dist)
    base_lr = scaled_lr(cfg.lr, batch_size)
    opt = sgd(list(net.encoder.parameters()) + list(net.projector.parameters()), lr=base_lr,
              weight_decay=cfg.weight_decay)
    total = max(cfg.epochs * steps_per_epoch(len(sub), batch_size, drop_last=True), 1)

    def lr_at(step: int) -> float:
        return cosine_lr(base_lr, step, total, warmup_steps=min(total // 10, 20))

    def step(index: torch.Tensor, global_step: int) -> float:
        set_lr(opt, lr_at(global_step))
        part = dist.part(len(index))  # this process's images of the global batch
        v0, v1 = two_views(aug, sub.batch(index[part]), rng.augment, within=(part.start, len(index)))
        index = index.to(rt.device)
        with oom_guard(batch_size, "fine-tuning"):
            with autocast(rt):
                z = project(torch.cat([v0, v1]))
            z0, z1 = z.float().chunk(2)
            z0, z1 = dist.gather_with_grad(z0), dist.gather_with_grad(z1)  # the global batch's projections
            loss = weighted_supcon(z0, z1, labels.index_select(0, index), weights.index_select(0, index),
                                   temperature=cfg.temperature, weighting=cfg.weighting, form=cfg.form,
                                   min_weight=cfg.min_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    return run_epochs(stage="supcon", epochs=cfg.epochs, n=len(sub), batch_size=batch_size, rng=rng, step=step,
                      modules={"net": net, "opt": opt}, last_ckpt=last_ckpt, progress=progress, lr_at=lr_at,
                      views=2, device=rt.device, dist=dist)
