"""(a2) the classifier on top of the encoder with a noise-robust loss, and (a3) per-image predictions.

Warm-up trains the classifier head alone on features of the frozen encoder. Because the encoder is
frozen, its features are computed once and the head trains on them directly: the warm-up then costs
a single forward pass over the data instead of one per epoch (same result as running the frozen
encoder every epoch on un-augmented images).

Under torchrun (engine.train.distributed) the prediction passes are sharded: each process predicts a
contiguous share of the images, with rank 0's weights, and the shares are gathered in dataset order. The
classifier's steps gather the logits of every process's part of the batch and compute the loss on the
whole global batch. The warm-up head is not sharded: every process trains it identically on the full
gathered features, as one process does (it costs next to nothing next to an encoder pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import ClassifyConfig
from engine.errors import UserError
from engine.method.augment import mixup, supervised_augment, to_model_input
from engine.method.losses import MixupBootLoss
from engine.method.models import Network, set_trainable
from engine.runs.progress import WHOLE, Progress, Span
from engine.train.device import Runtime, autocast, oom_guard
from engine.train.distributed import global_batch
from engine.train.loop import EpochRecord, Rng, run_epochs
from engine.train.schedule import cosine_lr, scaled_lr, set_lr, sgd
from engine.train.trainset import TrainSet, ordered_batches, steps_per_epoch

EVAL_BATCH = 512

# The hook a stage may run after each epoch of train_classifier: gets the epoch and a function returning
# that epoch's un-augmented probabilities of every image (computed at most once per epoch, shared with
# the bootstrapping loss's mixture), returns metrics for the epoch's event.
EpochHook = Callable[[int, Callable[[], np.ndarray]], dict[str, float]]


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, images_nhwc: np.ndarray, *, max_images: int = 10_000, chunk: int = 1000) -> Normalisation:
        """Per-channel mean/std of the dataset (a strided sample of at most max_images images), summed in
        float64 chunks so that large images never need a float copy of the whole sample."""
        step = max(1, len(images_nhwc) // max_images)
        rows = np.arange(0, len(images_nhwc), step)
        total, total_sq, count = np.zeros(3), np.zeros(3), 0
        for k in range(0, len(rows), chunk):
            x = np.asarray(images_nhwc[rows[k:k + chunk]], dtype=np.float64) / 255.0
            total += x.sum(axis=(0, 1, 2))
            total_sq += (x * x).sum(axis=(0, 1, 2))
            count += x.shape[0] * x.shape[1] * x.shape[2]
        mean = total / count
        std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)), 0.05)  # a flat channel must not blow up
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # (N, C) float32 softmax probabilities
    features: np.ndarray  # (N, 512) float32 encoder features

    @property
    def pseudo_labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def per_sample_ce(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each image against `labels`, from probabilities (N,) — the GMM's input."""
    p = probs[np.arange(len(labels)), labels]
    return -np.log(np.clip(p, 1e-12, 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- a3


@torch.no_grad()
def predict(net: Network, data: TrainSet, norm: Normalisation, rt: Runtime, *, with_features: bool = True) -> Predictions:
    """Softmax probabilities and encoder features of every image, un-augmented, eval mode."""
    net.eval()
    dist = rt.dist
    dist.sync_from_main(net)  # every process predicts its share with rank 0's weights and statistics
    share = dist.rows(len(data))
    probs, feats = [], []
    for index in ordered_batches(share.stop, EVAL_BATCH, start=share.start):
        # fp32 even where training uses bf16: the per-image losses are ranked, and bf16 logits (3
        # significant digits) would tie images the mixture and the review queue must tell apart.
        x = to_model_input(data.batch(index), out_size=data.image_size, mean=norm.mean, std=norm.std)
        h = net.features(x)
        logits = net.classifier(h)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        if with_features:
            feats.append(h.float().cpu())
    features = (dist.gather_rows(torch.cat(feats), len(data)).numpy() if with_features
                else np.zeros((len(data), 0), np.float32))
    out = dist.gather_rows(torch.cat(probs), len(data)).numpy()
    if not np.isfinite(out).all():
        # Diverged weights give NaN probabilities; flags from them would be silently meaningless.
        raise UserError("training diverged: the classifier's outputs are not finite numbers; lower the learning "
                        "rate (e.g. --set classify.lr=0.05)")
    return Predictions(out, features)


@torch.no_grad()
def encode(net: Network, data: TrainSet, norm: Normalisation, rt: Runtime) -> torch.Tensor:
    """Encoder features (N, 512) on the training device, eval mode."""
    net.eval()
    dist = rt.dist
    dist.sync_from_main(net)
    share = dist.rows(len(data))
    out = []
    for index in ordered_batches(share.stop, EVAL_BATCH, start=share.start):
        x = to_model_input(data.batch(index), out_size=data.image_size, mean=norm.mean, std=norm.std)
        out.append(net.features(x).float())  # fp32, like predict(): one pass, precision over speed
    return dist.gather_rows(torch.cat(out), len(data))


# ---------------------------------------------------------------------------------------------- a2


def warmup_head(
    net: Network,
    features: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: torch.nn.Module,
    cfg: ClassifyConfig,
    rt: Runtime,
    *,
    epochs: int,
    rng: Rng,
    last_ckpt: Path,
    progress: Progress,
    stage: str = "warmup",
    lr: float | None = None,
    span: Span = WHOLE,
    rows: torch.Tensor | None = None,
) -> list[EpochRecord]:
    """Train only the classifier head on precomputed features of the frozen encoder.

    rows: the images that train (indices into features/labels/the loss's per-image state); default all.
    """
    set_trainable(net, encoder=False, projector=False, classifier=True)
    net.classifier.train()
    rows = _all_rows(rows, len(labels), rt.device)
    n = len(rows)
    batch_size = min(cfg.batch_size, n)
    base_lr = scaled_lr(lr if lr is not None else cfg.warmup_lr, batch_size)
    opt = sgd(net.classifier.parameters(), lr=base_lr, weight_decay=cfg.weight_decay)
    total = max(epochs * steps_per_epoch(n, batch_size, drop_last=True), 1)

    def lr_at(step: int) -> float:
        return cosine_lr(base_lr, step, total)

    def step(index: torch.Tensor, global_step: int) -> float:
        set_lr(opt, lr_at(global_step))
        index = rows.index_select(0, index.to(rt.device))
        logits = net.classifier(features.index_select(0, index))
        loss = loss_fn(logits.float(), labels.index_select(0, index), index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run_epochs(stage=stage, epochs=epochs, n=n, batch_size=batch_size, rng=rng, step=step,
                      modules={"head": net.classifier, "opt": opt, "loss": loss_fn}, last_ckpt=last_ckpt,
                      progress=progress, lr_at=lr_at, device=rt.device, span=span, dist=rt.dist)


def train_classifier(
    net: Network,
    data: TrainSet,
    labels: torch.Tensor,
    loss_fn: torch.nn.Module,
    cfg: ClassifyConfig,
    norm: Normalisation,
    rt: Runtime,
    *,
    epochs: int,
    rng: Rng,
    last_ckpt: Path,
    progress: Progress,
    end_of_epoch: EpochHook | None = None,
    stage: str = "train",
    span: Span = WHOLE,
    rows: torch.Tensor | None = None,
) -> list[EpochRecord]:
    """Encoder + classifier trained end to end (projection head frozen), SGD + cosine schedule.

    With a `MixupBootLoss` every batch is mixed (`engine.method.augment.mixup`, drawn from the stage's
    augmentation generator) and, once bootstrapping, the un-mixed batch goes through the network once
    more without gradients for the bootstrapped targets (about a third more compute per step). After the
    warm-up epochs (`boot_warmup_epochs`) the loss's beta mixture is refitted after every epoch but the
    last on the cross-entropy of every image's un-augmented prediction against `labels`: one evaluation
    pass over the data per epoch (mixup-boot runs in one process; several processes are refused).

    rows: for each image of `data`, its index into `labels` and the loss's per-image state (ELR's
    targets), when `data` is a subset of the images those are sized for; default: the same images.
    """
    set_trainable(net, encoder=True, projector=False, classifier=True)
    dist = rt.dist
    model = dist.wrap(net, "__call__", rt.device)  # DistributedDataParallel across processes
    batch_size = global_batch(cfg.batch_size, len(data), dist)
    base_lr = scaled_lr(cfg.lr, batch_size)
    params = list(net.encoder.parameters()) + list(net.classifier.parameters())
    opt = sgd(params, lr=base_lr, weight_decay=cfg.weight_decay)
    total = max(epochs * steps_per_epoch(len(data), batch_size, drop_last=True), 1)
    boot = loss_fn if isinstance(loss_fn, MixupBootLoss) else None
    if boot is not None and dist.enabled:
        raise UserError("classify.loss=mixup-boot runs in one process: start it without torchrun or --gpus")
    warmup = boot_warmup_epochs(cfg, epochs)
    trained = None if rows is None else rows.cpu().numpy()  # the images of `data` among every image
    given = labels.cpu().numpy() if trained is None else labels.cpu().numpy()[trained]

    def lr_at(step: int) -> float:
        return cosine_lr(base_lr, step, total, warmup_steps=min(total // 20, 20))

    def after_epoch(epoch: int) -> dict[str, float]:
        seen: list[np.ndarray] = []

        def probs() -> np.ndarray:
            if not seen:
                seen.append(predict(net, data, norm, rt, with_features=False).probs)
            return seen[0]

        out: dict[str, float] = {}
        if boot is not None and warmup <= epoch + 1 < epochs:  # the next epoch bootstraps
            out.update(boot.refit(per_sample_ce(probs(), given), rows=trained))
        if end_of_epoch is not None:
            out.update(end_of_epoch(epoch, probs))
        return out

    def step(index: torch.Tensor, global_step: int) -> float:
        net.train()
        set_lr(opt, lr_at(global_step))
        part = dist.part(len(index))  # this process's images of the global batch
        x = data.batch(index[part])
        if cfg.augment:
            x = supervised_augment(x, out_size=data.image_size, mean=norm.mean, std=norm.std, generator=rng.augment,
                                   within=(part.start, len(index)))
        else:
            x = to_model_input(x, out_size=data.image_size, mean=norm.mean, std=norm.std)
        index = index.to(rt.device) if rows is None else rows.index_select(0, index.to(rt.device))
        with oom_guard(batch_size, "classifier training"):
            if boot is not None:
                loss = _mixup_boot_loss(net, x, labels.index_select(0, index), index, boot, cfg, rt, rng)
            else:
                with autocast(rt, classifier=True):
                    logits = model(x)
                logits = dist.gather_with_grad(logits.float())  # the global batch's logits: ELR sees all of it
                loss = loss_fn(logits, labels.index_select(0, index), index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:  # NFL+RCE diverges at our learning rate without it (APL clips at 5 too)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        return float(loss.detach())

    return run_epochs(stage=stage, epochs=epochs, n=len(data), batch_size=batch_size, rng=rng, step=step,
                      modules={"net": net, "opt": opt, "loss": loss_fn}, last_ckpt=last_ckpt, progress=progress,
                      lr_at=lr_at, end_of_epoch=after_epoch, device=rt.device, span=span, dist=dist)


def boot_warmup_epochs(cfg: ClassifyConfig, epochs: int) -> int:
    """Epochs of plain mixup before mixup-boot's first mixture fit: the share `cfg.boot_warmup` of the
    epochs, rounded, at least 1 (the first fit needs an epoch's losses)."""
    return max(1, round(cfg.boot_warmup * epochs))


def _mixup_boot_loss(net: Network, x: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, loss_fn: MixupBootLoss,
                     cfg: ClassifyConfig, rt: Runtime, rng: Rng) -> torch.Tensor:
    """One batch of mixup with dynamic bootstrapping: the network's detached logits for the un-mixed
    batch (only once bootstrapping), then the loss of the mixed batch."""
    guess = None
    if loss_fn.bootstrapping:
        with torch.no_grad(), autocast(rt, classifier=True):
            guess = net(x).float()
    mixed, perm, lam = mixup(x, alpha=cfg.mixup_alpha, generator=rng.augment)
    with autocast(rt, classifier=True):
        logits = net(mixed)
    return loss_fn.mixed(logits.float(), targets, index, perm=perm, lam=lam, guess_logits=guess)


def _all_rows(rows: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) if rows is None else rows.to(device)


@torch.no_grad()
def accuracy(net: Network, data: TrainSet, norm: Normalisation, rt: Runtime) -> float:
    preds = predict(net, data, norm, rt, with_features=False)
    return float((preds.pseudo_labels == data.labels.cpu().numpy()).mean())

