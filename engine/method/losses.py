"""Losses of the method: NT-Xent (a1), the classification losses (a2), weighted SupCon (b2).

Every loss returns per-sample values with ``reduction="none"`` (shape ``(B,)``) so the same code feeds
the optimiser ("mean") and the two-component mixture on per-sample losses. All maths runs in fp32
with autocast switched off: under bf16/fp16 autocast a similarity matmul at tau = 0.07 has only ~3
significant digits, and ELR's ``log(1 - <t, p>)`` rounds to ``log(0)``.

References:
    - SimCLR: Chen et al. 2020, https://arxiv.org/abs/2002.05709
    - NFL, RCE (Active-Passive Losses): Ma et al. 2020, https://arxiv.org/abs/2006.13554
    - ELR: Liu et al. 2020, https://arxiv.org/abs/2007.00151
    - Mixup with dynamic bootstrapping: Arazo et al. 2019, https://arxiv.org/abs/1904.11238
    - SupCon: Khosla et al. 2020, https://arxiv.org/abs/2004.11362
    - Weighted SupCon (eq. 8): Ciortan, Dupuis, Peel 2021
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import BOOT_TARGETS, SUPCON_FORMS, ClassifyConfig
from engine.method.beta_mixture import EPS as BMM_EPS
from engine.method.beta_mixture import fit_beta_mixture

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")
WEIGHTINGS: tuple[str, ...] = ("paper", "reference")

# Probability clamps of the reference implementations (ELR, Liu et al. 2020; Active-Passive Losses, Ma et al. 2020).
ELR_CLAMP = 1e-4
RCE_CLAMP = 1e-7


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _fp32(t: Tensor) -> Iterator[None]:
    """Disable autocast: casting inputs with ``.float()`` alone does not stop autocast from running the
    following matmul in bf16/fp16."""
    with torch.autocast(device_type=t.device.type, enabled=False):
        yield


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 1e-8:
        raise ValueError(f"temperature must be > 1e-8, got {temperature}")


def _check_views(z0: Tensor, z1: Tensor) -> None:
    if z0.dim() != 2 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must both have shape (B, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.shape[0] < 2:
        raise ValueError(f"contrastive losses need a batch of at least 2 images, got {z0.shape[0]}")


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (B, C) with C >= 2, got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")


def _view_pairs(n: int, device: torch.device) -> Tensor:
    """Index of each anchor's other view among the 2n stacked views: (a + n) mod 2n. Shape: (2n,)."""
    return torch.arange(2 * n, device=device).roll(n)


def _similarity_logits(z0: Tensor, z1: Tensor, temperature: float) -> Tensor:
    """Cosine similarities / tau of the 2B stacked views with self masked by -inf. Shape: (2B, 2B).

    -inf (not a large negative number) keeps logsumexp exact and gives self a zero gradient.
    """
    z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return logits.masked_fill(self_mask, float("-inf"))


def _per_image(per_anchor: Tensor) -> Tensor:
    """Mean of the two anchors (views) of each image. Shape: (2B,) -> (B,)."""
    n = per_anchor.shape[0] // 2
    return 0.5 * (per_anchor[:n] + per_anchor[n:])


# ----------------------------------------------------------------------------- (a1) SimCLR


def nt_xent(z0: Tensor, z1: Tensor, *, temperature: float = 0.5, reduction: Reduction = "mean") -> Tensor:
    """Normalised temperature-scaled cross entropy of SimCLR.

    The 2B views are anchors; an anchor's positive is the other view of its image and the remaining
    2B - 2 views are its negatives; self-similarity is excluded.

    Args:
        z0: projections of the first views (L2-normalised here). Shape: (B, D).
        z1: projections of the second views. Shape: (B, D).
        temperature: tau > 1e-8.
        reduction: "none" gives, per image, the mean of its two anchors' losses, shape (B,);
            "mean" is the mean over all 2B anchors; "sum" the sum of the (B,) per-image values.

    Returns:
        The loss, shape () or (B,).

    Raises:
        ValueError: temperature <= 1e-8, shape mismatch, B < 2 or an unknown reduction.
    """
    _check_temperature(temperature)
    _check_views(z0, z1)
    _check_reduction(reduction)
    with _fp32(z0):
        logits = _similarity_logits(z0, z1, temperature)
        per_anchor = F.cross_entropy(logits, _view_pairs(z0.shape[0], z0.device), reduction="none")
    return _reduce(_per_image(per_anchor), reduction)


# ----------------------------------------------------------------------------- (a2) classification


def cross_entropy(logits: Tensor, targets: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """Cross entropy on raw logits, in fp32.

    Args:
        logits: Shape (B, C).
        targets: class indices. Shape (B,).
        reduction: "none" (B,), "mean" or "sum".
    """
    _check_logits(logits, targets)
    _check_reduction(reduction)
    with _fp32(logits):
        return F.cross_entropy(logits.float(), targets, reduction=reduction)


def nfl(
    logits: Tensor, targets: Tensor, *, alpha: float = 1.0, gamma: float = 0.5, reduction: Reduction = "mean"
) -> Tensor:
    """Normalised focal loss, alpha * FL(y) / sum_k FL(k), with FL(k) = -(1 - p_k)^gamma log p_k.

    Follows the reference implementation (Active-Passive Losses' loss.py, ported by the paper code):
    the focal factors (1 - p_k)^gamma are constants for autograd (computed from detached
    probabilities), both in the numerator and in the normaliser, while the log p_k terms of the
    normaliser and log p_y of the numerator carry the gradient. The value is the true NFL, in
    (0, alpha]; with gamma = 0 it is NCE = log p_y / sum_k log p_k (and then the gradient is NCE's).

    Args:
        logits: Shape (B, C).
        targets: class indices. Shape (B,).
        alpha: scale of the loss (> 0).
        gamma: focusing parameter (>= 0).
        reduction: "none" (B,), "mean" or "sum".
    """
    _check_logits(logits, targets)
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"NFL gamma must be >= 0, got {gamma}")
    with _fp32(logits):
        log_p = F.log_softmax(logits.float(), dim=1)
        focal_k = (1 - log_p.detach().exp()).pow(gamma)  # reference: (1 - logpt.data.exp()) ** gamma
        normaliser = (-focal_k * log_p).sum(dim=1)
        log_p_y = log_p.gather(1, targets[:, None]).squeeze(1)
        focal = (1 - log_p_y.detach().exp()).pow(gamma)
        per_sample = alpha * (-focal * log_p_y) / normaliser
    return _reduce(per_sample, reduction)


def rce(
    logits: Tensor,
    targets: Tensor,
    *,
    beta: float = 1.0,
    log_zero: float = -9.2103,
    reduction: Reduction = "mean",
) -> Tensor:
    """Reverse cross entropy, -beta * sum_k p_k log q_k with q the one-hot label and log 0 := log_zero.

    The reference code clamps the one-hot at 1e-4 and takes the natural log, so log_zero defaults to
    ln(1e-4) = -9.2103 (the paper text writes -4). With p clamped to [1e-7, 1] the loss is
    -beta * log_zero * sum_{k != y} p_k, which equals -beta * log_zero * (1 - p_y) whenever no
    probability falls below 1e-7.

    Args:
        logits: Shape (B, C).
        targets: class indices. Shape (B,).
        beta: scale of the loss (> 0).
        log_zero: the value standing for log 0 (< 0).
        reduction: "none" (B,), "mean" or "sum".
    """
    _check_logits(logits, targets)
    _check_reduction(reduction)
    if not log_zero < 0:
        raise ValueError(f"rce log_zero must be negative (it stands for log 0), got {log_zero}")
    with _fp32(logits):
        p = F.softmax(logits.float(), dim=1).clamp(RCE_CLAMP, 1.0)
        not_y = torch.ones_like(p).scatter_(1, targets[:, None], 0.0)
        per_sample = -beta * log_zero * (p * not_y).sum(dim=1)
    return _reduce(per_sample, reduction)


def nfl_rce(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.5,
    log_zero: float = -9.2103,
    reduction: Reduction = "mean",
) -> Tensor:
    """Active-passive loss NFL (scale alpha) + RCE (scale beta); see `nfl` and `rce`. Shape: () or (B,)."""
    _check_reduction(reduction)
    per_sample = nfl(logits, targets, alpha=alpha, gamma=gamma, reduction="none") + rce(
        logits, targets, beta=beta, log_zero=log_zero, reduction="none"
    )
    return _reduce(per_sample, reduction)


class ClassificationLoss(nn.Module):
    """Common interface of the classification losses, so the training loop treats them alike.

    ``forward(logits, targets, index, *, reduction)``: index (B,) holds the dataset indices of the batch;
    only ELR uses it. Any state (ELR's targets) is a buffer, hence in ``state_dict()`` for resume.
    """

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, *, reduction: Reduction = "mean") -> Tensor:
        raise NotImplementedError


class CELoss(ClassificationLoss):
    """Cross entropy; ignores the index."""

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, *, reduction: Reduction = "mean") -> Tensor:
        return cross_entropy(logits, targets, reduction=reduction)


class NFLRCELoss(ClassificationLoss):
    """NFL + RCE with fixed hyper-parameters; ignores the index."""

    def __init__(self, *, alpha: float, beta: float, gamma: float, log_zero: float) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"NFL gamma must be >= 0, got {gamma}")
        if not log_zero < 0:
            raise ValueError(f"rce log_zero must be negative (it stands for log 0), got {log_zero}")
        self.alpha, self.beta, self.gamma, self.log_zero = alpha, beta, gamma, log_zero

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, *, reduction: Reduction = "mean") -> Tensor:
        return nfl_rce(
            logits,
            targets,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            log_zero=self.log_zero,
            reduction=reduction,
        )


class ELRLoss(ClassificationLoss):
    """Early-learning regularisation: CE + lam * log(1 - <t_i, p_i>).

    t_i is a temporal ensemble (EMA with momentum beta) of the model's normalised, detached
    predictions for image i, kept in the buffer ``target`` of shape (num_samples, num_classes), so it is
    saved with ``state_dict()``. Semantics of the reference code (ELR, Liu et al. 2020): p is clamped to
    [1e-4, 1 - 1e-4], the buffer starts at zero (no bias correction) and rows ``index`` are updated
    BEFORE the loss of the same step; the gradient flows through p only. The buffer is updated only
    in training mode (``loss.eval()`` evaluates without touching it).
    """

    target: Tensor

    def __init__(self, num_samples: int, num_classes: int, *, lam: float = 3.0, beta: float = 0.7) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"ELR needs num_samples >= 1, got {num_samples}")
        if num_classes < 2:
            raise ValueError(f"ELR needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ELR beta must be in [0, 1), got {beta}")
        if lam < 0:
            raise ValueError(f"ELR lambda must be >= 0, got {lam}")
        self.lam, self.beta = lam, beta
        self.register_buffer("target", torch.zeros(num_samples, num_classes))

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, *, reduction: Reduction = "mean") -> Tensor:
        """Args: logits (B, C), targets (B,), index (B,) dataset indices in [0, num_samples).

        Returns: the loss, shape () or (B,) for reduction="none".
        """
        self._check_batch(logits, targets, index)
        _check_reduction(reduction)
        with _fp32(logits):
            p = F.softmax(logits.float(), dim=1).clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
            if self.training:
                self._update_targets(p.detach(), index)
            agreement = (self.target[index] * p).sum(dim=1)  # <t_i, p_i>
            ce = F.cross_entropy(logits.float(), targets, reduction="none")
            per_sample = ce + self.lam * torch.log1p(-agreement)
        return _reduce(per_sample, reduction)

    @torch.no_grad()
    def _update_targets(self, p: Tensor, index: Tensor) -> None:
        self.target[index] = self.beta * self.target[index] + (1 - self.beta) * p / p.sum(dim=1, keepdim=True)

    def _check_batch(self, logits: Tensor, targets: Tensor, index: Tensor) -> None:
        _check_logits(logits, targets)
        num_samples, num_classes = self.target.shape
        if logits.shape[1] != num_classes:
            raise ValueError(f"ELR was built for {num_classes} classes, logits have {logits.shape[1]}")
        if index.shape != targets.shape or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"index must be integer dataset indices of shape {tuple(targets.shape)}")
        if self.target.device != logits.device:
            raise ValueError(f"ELR targets are on {self.target.device}, logits on {logits.device}: call .to(device)")
        # Range check only on CPU: on a GPU it would force a host sync every step (the loader's indices
        # are in range by construction there).
        on_cpu = index.device.type == "cpu" and index.numel() > 0
        if on_cpu and not 0 <= int(index.min()) <= int(index.max()) < num_samples:
            raise ValueError(f"index out of range [0, {num_samples}): min {int(index.min())}, max {int(index.max())}")


class MixupBootLoss(ClassificationLoss):
    """Mixup with dynamic bootstrapping (Arazo et al. 2019: M-DYR-H with hard targets, M-DYR-S with soft).

    Each image i has a probability w_i that its label is noisy, the posterior of the high-loss component
    of a beta mixture on the per-sample cross-entropy losses, refitted after every epoch (`refit`). Its
    training target is the bootstrapped distribution

        t_i = (1 - w_i) * onehot(y_i) + w_i * q_i,   q_i = onehot(argmax p~_i) ("hard") or p~_i ("soft"),

    with p~_i the network's (detached) prediction for the un-mixed image. A batch is trained on the mixed
    images lam * x + (1 - lam) * x[perm] (`engine.method.augment.mixup`), and the loss of mixed image j is
    the cross-entropy of its prediction against lam * t_j + (1 - lam) * t_perm(j): both partners'
    bootstrapped targets with their lambda weights. Before the first refit every w_i is 0, so the loss is
    plain mixup cross-entropy, the paper's warm-up. ``reg`` adds KL(prior || mean prediction of the batch)
    (the same value for every image of the batch), which keeps strong noise from bootstrapping every
    image into one class; the prior is the class frequencies of the given labels.

    State for resume: the buffer ``noisy_prob`` (N,) holds the current w_i and the extra state the
    number of refits, both in ``state_dict()``. `forward` (un-mixed, as the head's warm-up calls it) is
    the same loss with lam = 1 and the logits as their own prediction.
    """

    noisy_prob: Tensor
    prior: Tensor
    mixes_inputs = True  # engine.train.classify.train_classifier mixes the batch for this loss

    def __init__(self, num_samples: int, num_classes: int, *, target: str = "hard", reg: float = 1.0,
                 class_prior: Tensor | None = None, max_iter: int = 10,
                 percentiles: tuple[float, float] = (5.0, 95.0)) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"mixup-boot needs num_samples >= 1, got {num_samples}")
        if num_classes < 2:
            raise ValueError(f"mixup-boot needs num_classes >= 2, got {num_classes}")
        if target not in BOOT_TARGETS:
            raise ValueError(f"bootstrapping target must be one of {', '.join(BOOT_TARGETS)}, got {target!r}")
        if reg < 0:
            raise ValueError(f"mixup-boot reg must be >= 0, got {reg}")
        prior = torch.full((num_classes,), 1.0 / num_classes) if class_prior is None else class_prior.float()
        if prior.shape != (num_classes,) or bool((prior < 0).any()) or not float(prior.sum()) > 0:
            raise ValueError(f"class_prior must be {num_classes} non-negative frequencies, got {tuple(prior.shape)}")
        self.target, self.reg, self.max_iter, self.percentiles = target, reg, max_iter, percentiles
        self.refits = 0
        self.register_buffer("noisy_prob", torch.zeros(num_samples))
        self.register_buffer("prior", prior / prior.sum())

    @property
    def bootstrapping(self) -> bool:
        """True once a mixture was fitted: the targets then need the network's predictions."""
        return self.refits > 0

    def get_extra_state(self) -> dict[str, int]:
        return {"refits": self.refits}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.refits = int(state["refits"])

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, *, reduction: Reduction = "mean") -> Tensor:
        """The un-mixed loss (lam = 1; the logits are their own prediction). Shape: () or (B,)."""
        perm = torch.arange(logits.shape[0], device=logits.device)
        return self.mixed(logits, targets, index, perm=perm, lam=1.0, guess_logits=logits.detach(),
                          reduction=reduction)

    def mixed(self, logits: Tensor, targets: Tensor, index: Tensor, *, perm: Tensor, lam: float,
              guess_logits: Tensor | None, reduction: Reduction = "mean") -> Tensor:
        """Loss of a mixed batch.

        Args:
            logits: predictions for the mixed images lam * x + (1 - lam) * x[perm]. Shape (B, C).
            targets: given labels of the un-mixed images. Shape (B,).
            index: their dataset indices. Shape (B,).
            perm: each mixed image's partner in the batch. Shape (B,).
            lam: the mixing weight, in [0, 1].
            guess_logits: the network's logits for the un-mixed images (detached); needed once
                bootstrapping, ignored before. Shape (B, C).
            reduction: "none" (B,), "mean" or "sum".
        """
        self._check_batch(logits, targets, index)
        _check_reduction(reduction)
        if perm.shape != targets.shape:
            raise ValueError(f"perm must have shape {tuple(targets.shape)}, got {tuple(perm.shape)}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        num_classes = logits.shape[1]
        with _fp32(logits):
            log_p = F.log_softmax(logits.float(), dim=1)
            t = F.one_hot(targets, num_classes).float()
            if self.bootstrapping:
                if guess_logits is None or guess_logits.shape != logits.shape:
                    raise ValueError("bootstrapping needs the network's logits for the un-mixed images "
                                     f"(guess_logits of shape {tuple(logits.shape)})")
                guess = guess_logits.detach().float()
                q = F.softmax(guess, dim=1) if self.target == "soft" else F.one_hot(guess.argmax(1), num_classes).float()
                w = self.noisy_prob[index][:, None]
                t = (1 - w) * t + w * q
            mixed_t = lam * t + (1 - lam) * t.index_select(0, perm)
            per_sample = -(mixed_t * log_p).sum(dim=1)
            if self.reg > 0:
                mean_p = log_p.exp().mean(dim=0).clamp_min(1e-12)
                kl = torch.xlogy(self.prior, self.prior).sum() - (self.prior * mean_p.log()).sum()
                per_sample = per_sample + self.reg * kl
        return _reduce(per_sample, reduction)

    @torch.no_grad()
    def refit(self, losses: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
        """Fit the beta mixture on per-sample losses of every image (N,) — or of the images at `rows`
        (the ones that train; the others keep w_i = 0) — and set each w_i to its noise posterior, clipped
        to [1e-4, 1 - 1e-4] as the paper's code; a degenerate mixture sets every w_i to 0. Returns the
        mixture's summary for the epoch's event."""
        losses = np.asarray(losses, dtype=np.float64)
        expected = (self.noisy_prob.shape[0],) if rows is None else (len(rows),)
        if losses.shape != expected:
            raise ValueError(f"refit needs {expected[0]} losses, got shape {losses.shape}")
        mixture = fit_beta_mixture(losses, max_iter=self.max_iter, percentiles=self.percentiles)
        w = np.zeros_like(losses) if mixture.degenerate else mixture.noisy_posterior(losses).clip(BMM_EPS, 1 - BMM_EPS)
        if rows is not None:
            every = np.zeros(self.noisy_prob.shape[0])
            every[rows] = w
            w = every
        self.noisy_prob.copy_(torch.as_tensor(w, dtype=torch.float32))
        self.refits += 1
        return {"bmm_noisy_share": round(float((w > 0.5).mean()), 4), "bmm_mean_w": round(float(w.mean()), 4)}

    def _check_batch(self, logits: Tensor, targets: Tensor, index: Tensor) -> None:
        _check_logits(logits, targets)
        num_samples, num_classes = self.noisy_prob.shape[0], self.prior.shape[0]
        if logits.shape[1] != num_classes:
            raise ValueError(f"mixup-boot was built for {num_classes} classes, logits have {logits.shape[1]}")
        if index.shape != targets.shape or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"index must be integer dataset indices of shape {tuple(targets.shape)}")
        on_cpu = index.device.type == "cpu" and index.numel() > 0  # no host sync on a GPU (see ELRLoss)
        if on_cpu and not 0 <= int(index.min()) <= int(index.max()) < num_samples:
            raise ValueError(f"index out of range [0, {num_samples}): min {int(index.min())}, max {int(index.max())}")


def classification_loss(cfg: ClassifyConfig, *, num_samples: int, num_classes: int,
                        labels: np.ndarray | Tensor | None = None) -> ClassificationLoss:
    """Build the (a2) loss named by ``cfg.loss``: "ce", "nfl+rce", "elr" or "mixup-boot".

    Args:
        cfg: the classification settings (loss name and its hyper-parameters).
        num_samples: dataset size N (ELR keeps one target row per image, mixup-boot one noise probability).
        num_classes: C.
        labels: the given labels (N,), for mixup-boot's class prior (uniform without them).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if cfg.loss == "ce":
        return CELoss()
    if cfg.loss == "nfl+rce":
        return NFLRCELoss(alpha=cfg.nfl_alpha, beta=cfg.rce_beta, gamma=cfg.nfl_gamma, log_zero=cfg.rce_log_zero)
    if cfg.loss == "elr":
        return ELRLoss(num_samples, num_classes, lam=cfg.elr_lambda, beta=cfg.elr_beta)
    if cfg.loss == "mixup-boot":
        prior = None
        if labels is not None:
            counts = np.bincount(np.asarray(torch.as_tensor(labels).cpu()), minlength=num_classes)[:num_classes]
            prior = torch.as_tensor(counts, dtype=torch.float32)
        return MixupBootLoss(num_samples, num_classes, target=cfg.boot_target, reg=cfg.boot_reg, class_prior=prior,
                             max_iter=cfg.bmm_max_iter, percentiles=cfg.bmm_percentiles)
    raise ValueError(f"loss must be one of ce, nfl+rce, elr, mixup-boot, got {cfg.loss!r}")


# ----------------------------------------------------------------------------- (b2) weighted SupCon


def weighted_supcon(
    z0: Tensor,
    z1: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    temperature: float = 0.07,
    weighting: Literal["paper", "reference"] = "paper",
    form: Literal["mean-log", "paper"] = "mean-log",
    min_weight: float = 0.01,
    reduction: Reduction = "mean",
) -> Tensor:
    """Weighted supervised contrastive loss (Ciortan et al. 2021, eq. 8).

    Anchors are the 2B views; positives P(a) of anchor a are the other views with the same
    (pseudo-)label, its own other view included. With s_ap = log softmax_a(p), the softmax running over
    all 2B - 1 other views (denominator unweighted), the loss of anchor a is

        form "mean-log": - sum_p W_ap s_ap / sum_p W_ap            (weighted mean of the logs)
        form "paper":    - log( (1 / |P(a)|) sum_p W_ap exp(s_ap) ) (eq. 8 as printed: log outside)

    and W_ap is
        weighting "paper":     1 for the anchor's own other view, the ANCHOR's clean probability w_i
                               otherwise (eq. 8's w~);
        weighting "reference": the positive's own weight w_p for every positive, own view included, with
                               weights clipped to >= min_weight (the published code's variant, which also
                               down-weights a noisy anchor's instance-discrimination term).
    With all weights 1, "mean-log" is SupCon's L_out and "paper" its L_in (Khosla et al. 2020, eqs. 2
    and 3); by Jensen's inequality L_in <= L_out, with equality when an anchor has one positive. An
    anchor whose positives all weigh 0 (only possible with "reference" and min_weight = 0) contributes
    0 in both forms. Unlike SupContrast we do not multiply by tau / base_tau (= 1 at tau = 0.07).

    Args:
        z0, z1: projections of the two views. Shape: (B, D).
        labels: (pseudo-)labels. Shape: (B,).
        weights: clean probabilities in [0, 1]. Shape: (B,).
        temperature: tau > 1e-8.
        weighting: "paper" or "reference".
        form: "mean-log" or "paper".
        min_weight: lower clip of the weights for "reference".
        reduction: "none" gives per image the mean of its two anchors, shape (B,); "mean"; "sum".
    """
    _check_temperature(temperature)
    _check_views(z0, z1)
    _check_reduction(reduction)
    n = z0.shape[0]
    if labels.shape != (n,) or weights.shape != (n,):
        raise ValueError(
            f"labels and weights must have shape ({n},), got {tuple(labels.shape)} and {tuple(weights.shape)}"
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if form not in SUPCON_FORMS:
        raise ValueError(f"form must be one of {', '.join(SUPCON_FORMS)}, got {form!r}")
    with _fp32(z0):
        logits = _similarity_logits(z0, z1, temperature)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = _positives(labels)
        pair_weights = _pair_weights(weights.float(), positive, weighting, min_weight)
        # masked_fill, not a product: log_prob is -inf on the diagonal and 0 * -inf is NaN.
        log_prob = log_prob.masked_fill(~positive, 0.0)
        if form == "paper":
            per_anchor = _log_of_mean(log_prob, pair_weights, positive)
        else:
            per_anchor = -(pair_weights * log_prob).sum(dim=1) / pair_weights.sum(dim=1).clamp_min(1e-12)
    return _reduce(_per_image(per_anchor), reduction)


def _log_of_mean(log_prob: Tensor, pair_weights: Tensor, positive: Tensor) -> Tensor:
    """-log( (1/|P(a)|) sum_p W_ap exp(log_prob_ap) ) per anchor, by logsumexp. Shape: (2B,).

    log W is -inf outside the positives and for zero weights, so those pairs drop out of the sum. A row
    with no weighted positive would give log 0: it is replaced by a row of zeros before logsumexp (which
    keeps its gradient finite) and its loss set to 0.
    """
    weighted = pair_weights > 0
    has_positive = weighted.any(dim=1)
    terms = torch.where(weighted, pair_weights.clamp_min(1e-30).log() + log_prob, float("-inf"))
    terms = terms.masked_fill(~has_positive[:, None], 0.0)
    log_mean = torch.logsumexp(terms, dim=1) - positive.sum(dim=1).clamp_min(1).float().log()
    return torch.where(has_positive, -log_mean, torch.zeros_like(log_mean))


def _positives(labels: Tensor) -> Tensor:
    """Same-label pairs among the 2B stacked views, self excluded. Shape: (2B, 2B) bool."""
    y = torch.cat([labels, labels])
    return (y[:, None] == y[None, :]).fill_diagonal_(False)


def _pair_weights(weights: Tensor, positive: Tensor, weighting: str, min_weight: float) -> Tensor:
    """W_ap of `weighted_supcon`; 0 outside the positives. Shape: (2B, 2B)."""
    two_n = positive.shape[0]
    w = torch.cat([weights, weights])
    if weighting == "paper":
        own_view = torch.zeros_like(positive)
        own_view[torch.arange(two_n, device=w.device), _view_pairs(two_n // 2, w.device)] = True
        per_pair = torch.where(own_view, torch.ones_like(w)[:, None], w[:, None])  # anchor's weight w_i
    else:
        per_pair = w.clamp_min(min_weight)[None, :].expand(two_n, two_n)  # positive's (column) weight w_p
    return per_pair * positive
