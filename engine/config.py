"""The one typed configuration of a run.

Every stage reads its settings from a frozen dataclass here; the whole `RunConfig` is written to
`RUN/config.json` once when a run starts and read back on resume. This module imports no torch, so
the app can build and validate configs without loading the training stack.

Defaults are the CPU profile (sized so that the bundled sample finishes in about two minutes on two
cores); `gpu_profile` swaps in the GPU one. Learning rates are given for a batch of 256
and scaled linearly with the batch size (Goyal et al. 2017's rule, as the paper's published code does).
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from engine.errors import UserError
from engine.filekind import require_regular_file

LossName = Literal["ce", "nfl+rce", "elr", "mixup-boot"]
Stem = Literal["auto", "small", "standard"]
DeviceName = Literal["auto", "cpu", "cuda"]
SupConWeighting = Literal["paper", "reference"]
SupConForm = Literal["mean-log", "paper"]
Precision = Literal["auto", "fp32", "bf16"]
Covariance = Literal["tied", "full"]
LossScale = Literal["ce", "sqrt"]
LOSS_SCALES: tuple[str, ...] = typing.get_args(LossScale)
BootTarget = Literal["hard", "soft"]
Arch = Literal["resnet18", "resnet34", "resnet50", "small-cnn"]

LOSSES: tuple[str, ...] = ("ce", "nfl+rce", "elr", "mixup-boot")
BOOT_TARGETS: tuple[str, ...] = ("hard", "soft")
SUPCON_FORMS: tuple[str, ...] = typing.get_args(SupConForm)
ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "small-cnn")
# A config.json is about 2 KB; anything this large is not one, and is refused before it is read.
MAX_CONFIG_BYTES = 1024 * 1024
AUTO_TIME_LIMIT = -1.0  # RunConfig.time_limit_s: the ceiling follows the image count (engine.train.budget)
AUTO_SIZE = 0  # DataConfig.image_size: follows the images and the device (engine.data.working_size)


class ConfigError(UserError):
    """Settings no stage can run with (a flag, --set, a config file): bad input, exit code 2."""


@dataclass(frozen=True)
class DataConfig:
    # working size: every image is decoded once to this square size (prepare step). The device profiles
    # start from AUTO_SIZE, which a new run resolves from its images and device (engine.data.working_size)
    # and records here as a number.
    image_size: int = 32
    # The most memory the decoded images may take where training holds them (the GPU, else host memory);
    # above it batches stream from the cache file (engine.train.trainset). 0 = auto: half of the memory
    # free there when the run starts. It changes where images are held, never the results.
    memory_budget_gb: float = 0.0
    prepare_workers: int = 0  # decoding processes of the prepare stage, this one included; 0 = every core


@dataclass(frozen=True)
class ModelConfig:
    # "small" = 3x3 stride-1 conv, no max-pool (CIFAR stem, for inputs <= 64 px); "standard" =
    # torchvision's 7x7 stride-2 conv + max-pool. "auto" picks small for <= 64 px on a GPU and
    # standard on a CPU, where the small stem costs ~16x the FLOPs (bench/throughput.py).
    stem: Stem = "auto"
    # The encoder: a torchvision ResNet trunk, 512-d features (18, 34) or 2048-d (50), or "small-cnn", four
    # 3x3 conv blocks with 256-d features (the CPU profile's: cpu_profile); the heads take the dim.
    arch: Arch = "resnet18"
    # Start the encoder from these weights (`fit --weights`): a torchvision ResNet state dict or a CLeaN
    # checkpoint, read from disk, never downloaded (engine.train.weights). The sha256 is recorded when a
    # run starts, so a resumed run loads the same file.
    weights: str = ""
    weights_sha256: str = ""
    proj_hidden: int = 512  # projection head 512 -> 512 -> 128 (paper)
    proj_dim: int = 128
    head_hidden: int = 128  # classifier 512 -> 128 -> BN -> ReLU -> C (paper's "multilayer" head)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop area fraction
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool = False  # off by default for small images (paper demo, SupContrast, SimCLR CIFAR)
    blur_sigma: tuple[float, float] = (0.1, 2.0)


@dataclass(frozen=True)
class PretrainConfig:
    """(a1) SimCLR pre-training of the encoder; labels unused."""

    enabled: bool = True
    epochs: int = 12
    batch_size: int = 128  # on a CPU the step count matters more than the number of negatives
    lr: float = 0.12  # SGD, per 256 images (lightly's 0.06 per 128), cosine to 0
    weight_decay: float = 5e-4
    temperature: float = 0.5  # NT-Xent tau (paper code and SimCLR's CIFAR setting)


@dataclass(frozen=True)
class ClassifyConfig:
    """(a2) classifier on top of the encoder with a noise-robust loss."""

    loss: LossName = "elr"
    warmup_epochs: int = 2  # classifier head only, encoder frozen
    epochs: int = 12  # then encoder + head
    batch_size: int = 128
    lr: float = 0.1  # SGD momentum 0.9, per 256 images, cosine schedule (0.1 beat 0.05 and 0.2 on CIFAR-10, and 0.05 on digits)
    warmup_lr: float = 0.1  # the lone head on frozen features tolerates (and needs) a larger step
    weight_decay: float = 5e-4
    elr_lambda: float = 3.0  # ELR: CIFAR-10 settings of the reference code
    elr_beta: float = 0.7
    nfl_alpha: float = 1.0  # NFL+RCE: CIFAR-10 settings (use 10 / 0.1 for 100 classes)
    rce_beta: float = 1.0
    nfl_gamma: float = 0.5
    rce_log_zero: float = -9.2103  # ln(1e-4), as in the Active-Passive Losses code (Ma et al. 2020); paper text: -4
    augment: bool = True  # light crop + flip during supervised epochs
    grad_clip: float = 5.0  # max gradient norm per step, as the Active-Passive Losses code (0 = off)
    # "mixup-boot": mixup + dynamic bootstrapping (Arazo et al. 2019, M-DYR-H/S; engine.method.losses).
    # lambda ~ Beta(alpha, alpha) mixes each image with a random partner of its batch; 32 is the paper's
    # CIFAR setting (lambda close to 0.5: strong mixing, which is what keeps noisy labels from being memorised).
    mixup_alpha: float = 32.0
    # Share of the classifier epochs trained with plain mixup (every image trusted) before the first
    # beta-mixture fit, as the paper's code warms up, so that clean and noisy losses have separated: a
    # third, at least one epoch (12 of the CPU profile's 36, 10 of the GPU profile's 30). A share, not a
    # count, so that it follows --epochs and the epochs a --budget sizes.
    boot_warmup: float = 1 / 3
    # The bootstrapped target mixes the given label with the network's own prediction of the un-mixed
    # image, in proportion to the image's noise probability: "hard" = its arg-max class (M-DYR-H), "soft"
    # = the whole softmax (M-DYR-S).
    boot_target: BootTarget = "hard"
    # Weight of KL(prior || mean prediction of the batch), the paper's guard against every image being
    # bootstrapped into one class under strong noise. Prior: the class frequencies of the given labels
    # (uniform on balanced data, as the paper's; 0 turns the term off).
    boot_reg: float = 1.0
    # The beta mixture on the per-sample cross-entropy losses, refitted after every epoch (engine.method.
    # beta_mixture): EM iterations (the paper's code: 10) and the loss percentiles that map to 0 and 1
    # (losses outside are left out of the fit, as in the paper's code).
    bmm_max_iter: int = 10
    bmm_percentiles: tuple[float, float] = (5.0, 95.0)


@dataclass(frozen=True)
class SplitConfig:
    """(b1) two-component GMM on per-sample losses."""

    threshold: float = 0.5  # flagged = clean_prob < threshold
    average_last: int = 3  # average min-max-normalised losses over the last k evaluations
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 5e-4
    covariance: Covariance = "tied"  # one variance shared by both components ("full": the paper code's); see selection
    scale: LossScale = "ce"  # what the mixture sees of each loss: "ce" as it is, "sqrt" its square root; see selection


@dataclass(frozen=True)
class FinetuneConfig:
    """(b2) weighted supervised contrastive learning, (b3) a fresh classifier head."""

    epochs: int = 6  # weighted SupCon epochs
    batch_size: int = 256
    lr: float = 0.03
    weight_decay: float = 1e-4
    temperature: float = 0.07
    weighting: SupConWeighting = "paper"  # eq. 8 (own view 1) or the reference code's column weights
    # "mean-log": -sum_p w log softmax / sum_p w (SupCon's L_out, weighted); "paper": eq. 8 as printed,
    # -log(sum_p w softmax / |P|) (SupCon's L_in, weighted). See engine.method.losses.weighted_supcon.
    form: SupConForm = "mean-log"
    head_epochs: int = 8  # fresh classifier head on the pseudo-labels, encoder frozen ...
    head_lr: float = 0.05
    full_epochs: int = 4  # ... then encoder + head together (the paper's warm-up-then-full schedule)
    full_lr: float = 0.01
    head_min_weight: float = 0.0  # train the new head only on images whose pseudo-label weight reaches this
    min_weight: float = 0.01
    # Phase (b) runs only once a person has decided something: without decisions it was measured to lower
    # the accuracy on real human noise (CIFAR-10N worst: predicted labels 0.39 against the given 0.59, AUROC
    # 0.72 -> 0.67; bench/results/supcon_forms.md). false runs it on the model's own clean probabilities.
    require_decisions: bool = True
    # Phase (b) is kept only when it beats phase (a) on reviewed images it did not train on
    # (engine.method.holdout): this share of the decisions is held out for that check (0: no check, (b) is
    # always kept), and (b) must fix more of them than it breaks, by a one-sided sign test at check_p.
    check_share: float = 0.2
    check_p: float = 0.1


@dataclass(frozen=True)
class EmbedConfig:
    enabled: bool = True  # the UMAP map of the encoder features (evidence for the app, not needed for flags)
    n_neighbors: int = 15
    min_dist: float = 0.1
    # Above this many images UMAP is fitted on a sample and transforms the rest: 50,000 points take 18 s
    # that way against 25 s for a full fit on 2 CPU cores (bench/results/umap_speed*.md).
    fit_sample: int = 20_000


@dataclass(frozen=True)
class RelabelConfig:
    """The bar a suggestion must clear to replace a given label without a review (engine.method.relabel)."""

    # Out-of-fold agreement of a linear head with the clean-looking labels. 0.95, not 0.9: a classifier that
    # fills 10 minutes on a fast CPU also learns part of the wrong labels into its features, and cleared 0.9
    # where its changes were wrong (5,000 CIFAR-10 images with no wrong label: competence 0.933, 48 labels
    # changed, none right; CIFAR-10N aggre: 0.906, 127 changed, 66 % right). The bundled sample clears it (0.97).
    min_competence: float = 0.95
    min_prob: float = 0.9  # the classifier's probability of the suggestion
    min_agreement: float = 0.6  # share of the nearest neighbours labelled as the suggestion
    neighbours: int = 10  # k of that neighbourhood (cosine on encoder features)


@dataclass(frozen=True)
class ReviewConfig:
    """The review loop; nothing here changes what the network trains on."""

    memory: bool = True  # start with the decisions the workspace remembers for these images (fit --no-memory)
    rerank_every: int = 20  # re-rank the review queue after this many new decisions (0: only on request)


@dataclass(frozen=True)
class EvidenceConfig:
    """Near-duplicates and outliers, from the decoded cache and the encoder features (engine.method.evidence)."""

    enabled: bool = True
    # Two images are copies when their 16x16 thumbnails correlate this well, and their detail (edges,
    # texture) this well, in the best of their views (as is, mirrored, 90 % crops): engine.method.duplicates.
    duplicate_match: float = 0.90
    duplicate_detail: float = 0.80
    duplicate_cosine: float = 0.95  # encoder neighbours this similar (cosine) are candidate copies as well
    outlier_neighbors: int = 10  # outlier_score: mean cosine distance to this many nearest neighbours


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    seed: int = 0
    device: DeviceName = "auto"
    precision: Precision = "auto"  # bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    finetune_after_fit: bool = False  # `fit --finetune`: run phase (b) right after (a)
    # `fit --budget`: seconds phase (a) may take; the epochs a person did not set are sized to fill it
    # (engine.train.budget). 0: no budget, the epochs as given.
    budget_s: float = 0.0
    # Phase (a)'s ceiling when there is no budget: the epochs a person did not set are kept, unless this
    # machine would take longer than this with them, and then shrunk to fit. AUTO_TIME_LIMIT: the rule of
    # engine.train.budget.auto_time_limit, by image count (the CPU profile's default, so that the defaults
    # finish in minutes on a slow CPU as on a fast one), which from budget.FILL_MIN_N images on also grows
    # the epochs to fill it; 0: no ceiling (the GPU profile).
    # A new run records the seconds it used, so a resumed run is the run that was planned.
    time_limit_s: float = AUTO_TIME_LIMIT


# The epochs a budget sizes (engine.train.budget); a value a person sets for one of them keeps it.
BUDGET_SIZED: tuple[str, ...] = ("pretrain.epochs", "classify.epochs")
_DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_time_limit(text: str) -> float:
    """`fit --time-limit`: "auto", "none" / "0", or a duration as --budget takes it."""
    word = str(text).strip().lower()
    if word == "auto":
        return AUTO_TIME_LIMIT
    if word in ("none", "0", "0s", "0m"):
        return 0.0
    try:
        return parse_budget(text)
    except ConfigError:
        raise ConfigError(f"--time-limit must be auto, none or a duration such as 3m, got {text!r}") from None


def parse_budget(text: str) -> float:
    """Seconds from "600", "600s", "10m", "10min", "1.5h". Raises ConfigError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", str(text))
    if not m:
        raise ConfigError(f"--budget must be a duration such as 10m, 600s or 1h, got {text!r}")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if not 10 <= seconds <= 7 * 24 * 3600:
        raise ConfigError(f"--budget must be between 10 s and 7 days, got {text!r}")
    return seconds


def profile_for(device: str) -> RunConfig:
    """The defaults a new run starts from on `device` ("cpu" or "cuda"; resolve "auto" first).

    The one place that decides CPU or GPU defaults: the CLI and the app's Train page both call it.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"profile_for takes a resolved device, cpu or cuda, got {device!r}")
    cfg = RunConfig(data=DataConfig(image_size=AUTO_SIZE))
    return gpu_profile(cfg) if device == "cuda" else cpu_profile(cfg)


def cpu_profile(cfg: RunConfig) -> RunConfig:
    """The light encoder (engine.method.models.SMALL_CNN) on a CPU: about 5x the training images per second of
    ResNet-18, so a time limit trains several times the epochs; its ranking (AUROC) was better on every
    benchmark case, its F1 on every 2,000-image case but not at 5,000 (bench/results/cpu_encoder.md). The GPU
    keeps the paper's ResNet-18.

    12 pre-training and 36 classifier epochs: on a CPU the classifier's epochs buy more than SimCLR's. Side
    by side on a 2-core AVX2 CPU (README, Results; bench/quality.py --pretrain-epochs 12 --epochs 36) against
    the former profile's 24 + 12 as the time limit left them (24 + 12, 21 + 12, 21 + 12, 15 + 12): the
    classifier's test accuracy rose on every case (CIFAR-10N worst 0.564 -> 0.588, aggre 0.642 -> 0.687,
    Imagenette 25 % 0.630 -> 0.644, 5 % 0.658 -> 0.724), the ranking's AUROC too (0.837 -> 0.842, 0.857 ->
    0.889, 0.903 -> 0.908, 0.906 -> 0.917), and 5,000 images took 292-358 s instead of 384-496 s. A
    classifier that trains that long splits with one variance per mixture component
    (`split.covariance = "full"`, the paper code's): its clean losses crowd near 0, and one shared variance
    then flagged half the wrong labels of the heavy-noise cases (F1 at 12 + 36, shared -> per component:
    worst 0.511 -> 0.718, Imagenette 25 % 0.561 -> 0.729, aggre 0.478 -> 0.487, Imagenette 5 % 0.436 ->
    0.446, the bundled sample 0.991 -> 0.997; with no wrong label 5.8 % -> 11.4 % flagged, the one loss).
    The limit shortens pre-training first (engine.train.budget.capped)."""
    return replace(cfg, model=replace(cfg.model, arch="small-cnn"),
                   classify=replace(cfg.classify, epochs=3 * cfg.classify.epochs),
                   split=replace(cfg.split, covariance="full"))


def gpu_profile(cfg: RunConfig) -> RunConfig:
    """Longer schedules and bigger batches for a GPU, where an epoch costs seconds."""
    return replace(
        cfg,
        pretrain=replace(cfg.pretrain, epochs=100, batch_size=512),
        classify=replace(cfg.classify, epochs=30, warmup_epochs=3, batch_size=256),
        finetune=replace(cfg.finetune, epochs=20, batch_size=512, head_epochs=15),
        time_limit_s=0.0,  # an epoch costs seconds: the schedule as given
    )


# ----------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError with a specific message for settings no stage can run with."""
    checks: list[tuple[bool, str]] = [
        (cfg.data.image_size == AUTO_SIZE or 8 <= cfg.data.image_size <= 512,
         f"image_size must be between 8 and 512, got {cfg.data.image_size} ({AUTO_SIZE} = auto: from the images)"),
        (cfg.data.memory_budget_gb >= 0, f"data.memory_budget_gb must be >= 0 (0 = auto), got {cfg.data.memory_budget_gb}"),
        (cfg.data.prepare_workers >= 0, f"data.prepare_workers must be >= 0 (0 = every core), got {cfg.data.prepare_workers}"),
        (cfg.classify.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {cfg.classify.loss!r}"),
        (cfg.pretrain.epochs >= 0 and cfg.classify.epochs >= 0, "epochs must be >= 0"),
        (cfg.classify.warmup_epochs >= 0 and cfg.finetune.epochs >= 0, "epochs must be >= 0"),
        (cfg.pretrain.batch_size >= 2, f"pre-training batch size must be >= 2, got {cfg.pretrain.batch_size}"),
        (cfg.classify.batch_size >= 2, f"batch size must be >= 2, got {cfg.classify.batch_size}"),
        (cfg.finetune.batch_size >= 2, f"fine-tuning batch size must be >= 2, got {cfg.finetune.batch_size}"),
        (cfg.pretrain.temperature > 1e-6, "pre-training temperature must be > 0"),
        (cfg.finetune.temperature > 1e-6, "fine-tuning temperature must be > 0"),
        (0.0 < cfg.split.threshold < 1.0, f"flag threshold must be in (0, 1), got {cfg.split.threshold}"),
        (cfg.split.average_last >= 1, "split.average_last must be >= 1"),
        (cfg.split.covariance in ("tied", "full"), f"split.covariance must be tied or full, got {cfg.split.covariance!r}"),
        (cfg.split.scale in LOSS_SCALES, f"split.scale must be one of {', '.join(LOSS_SCALES)}, got {cfg.split.scale!r}"),
        (cfg.classify.grad_clip >= 0, "classify.grad_clip must be >= 0 (0 turns it off)"),
        (0.0 <= cfg.classify.elr_beta < 1.0, "elr_beta must be in [0, 1)"),
        (cfg.classify.mixup_alpha > 0, f"classify.mixup_alpha must be > 0, got {cfg.classify.mixup_alpha}"),
        (0.0 <= cfg.classify.boot_warmup < 1.0,
         f"classify.boot_warmup must be a share of the epochs in [0, 1), got {cfg.classify.boot_warmup}"),
        (cfg.classify.boot_target in BOOT_TARGETS,
         f"classify.boot_target must be hard or soft, got {cfg.classify.boot_target!r}"),
        (cfg.classify.boot_reg >= 0, "classify.boot_reg must be >= 0 (0 turns it off)"),
        (cfg.classify.bmm_max_iter >= 1, "classify.bmm_max_iter must be >= 1"),
        (0.0 <= cfg.classify.bmm_percentiles[0] < cfg.classify.bmm_percentiles[1] <= 100.0,
         "classify.bmm_percentiles must be 0 <= lo < hi <= 100"),
        (cfg.classify.rce_log_zero < 0, "rce_log_zero must be negative (it stands for log 0)"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}"),
        (cfg.model.stem in ("auto", "small", "standard"), f"unknown stem {cfg.model.stem!r}"),
        (cfg.model.arch in ARCHS, f"model.arch must be one of {', '.join(ARCHS)}, got {cfg.model.arch!r}"),
        (bool(cfg.model.weights) or not cfg.model.weights_sha256,
         "model.weights_sha256 is set but model.weights names no file"),
        (0.0 < cfg.evidence.duplicate_match <= 1.0 and 0.0 < cfg.evidence.duplicate_detail <= 1.0,
         "evidence.duplicate_match and duplicate_detail must be in (0, 1]"),
        (0.0 < cfg.evidence.duplicate_cosine <= 1.0, "evidence.duplicate_cosine must be in (0, 1]"),
        (cfg.evidence.outlier_neighbors >= 1,
         f"evidence.outlier_neighbors must be >= 1, got {cfg.evidence.outlier_neighbors}"),
        (cfg.finetune.weighting in ("paper", "reference"), f"unknown weighting {cfg.finetune.weighting!r}"),
        (cfg.finetune.form in SUPCON_FORMS,
         f"finetune.form must be {' or '.join(SUPCON_FORMS)}, got {cfg.finetune.form!r}"),
        (0.0 < cfg.augment.crop_scale[0] <= cfg.augment.crop_scale[1] <= 1.0, "crop_scale must be 0 < lo <= hi <= 1"),
        (0.0 < cfg.augment.crop_ratio[0] <= cfg.augment.crop_ratio[1], "crop_ratio must be 0 < lo <= hi"),
        (all(0.0 <= p <= 1.0 for p in (cfg.augment.flip_p, cfg.augment.jitter_p, cfg.augment.gray_p)),
         "augmentation probabilities (flip_p, jitter_p, gray_p) must be in [0, 1]"),
        (all(j >= 0 for j in cfg.augment.jitter) and cfg.augment.jitter[3] <= 0.5,
         "jitter strengths must be >= 0 and hue <= 0.5"),
        (all(x > 0 for x in (cfg.pretrain.lr, cfg.classify.lr, cfg.classify.warmup_lr, cfg.finetune.lr,
                             cfg.finetune.head_lr, cfg.finetune.full_lr)), "learning rates must be > 0"),
        (0.0 <= cfg.finetune.min_weight <= 1.0, "finetune.min_weight must be in [0, 1]"),
        (0.0 <= cfg.finetune.head_min_weight <= 1.0, "finetune.head_min_weight must be in [0, 1]"),
        (0.0 <= cfg.finetune.check_share < 1.0, "finetune.check_share must be in [0, 1)"),
        (0.0 < cfg.finetune.check_p <= 1.0, "finetune.check_p must be in (0, 1]"),
        (cfg.finetune.head_epochs >= 0 and cfg.finetune.full_epochs >= 0, "epochs must be >= 0"),
        (cfg.embed.n_neighbors >= 2 and 0.0 <= cfg.embed.min_dist, "embed.n_neighbors must be >= 2, min_dist >= 0"),
        (cfg.embed.fit_sample >= 100, "embed.fit_sample must be >= 100"),
        (all(0.0 <= v <= 1.0 for v in (cfg.relabel.min_competence, cfg.relabel.min_prob, cfg.relabel.min_agreement)),
         "relabel.min_competence, min_prob and min_agreement must be in [0, 1]"),
        (cfg.budget_s == 0 or 10 <= cfg.budget_s <= 7 * 24 * 3600,
         f"budget_s must be 0 (no budget) or between 10 s and 7 days, got {cfg.budget_s}"),
        (cfg.time_limit_s in (0, AUTO_TIME_LIMIT) or 10 <= cfg.time_limit_s <= 7 * 24 * 3600,
         f"time_limit_s must be {AUTO_TIME_LIMIT:g} (auto), 0 (none) or between 10 s and 7 days, got {cfg.time_limit_s}"),
        (cfg.relabel.neighbours >= 1, f"relabel.neighbours must be >= 1, got {cfg.relabel.neighbours}"),
        (cfg.review.rerank_every >= 0, f"review.rerank_every must be >= 0 (0: only on request), got "
                                       f"{cfg.review.rerank_every}"),
        (cfg.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {cfg.precision!r}"),
        # numpy and scikit-learn take seeds in [0, 2**32); outside it a run would fail only after training.
        (0 <= cfg.seed < 2**32, f"seed must be between 0 and {2**32 - 1}, got {cfg.seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig; unknown keys are an error (a typo must not be silently ignored)."""
    return _build(RunConfig, d, "")


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix or 'root'!r} must be an object")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(hint, value, prefix + name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin is tuple:
        # Tuples here are fixed-length (crop_scale lo/hi, jitter's four strengths): a wrong length would
        # only fail deep inside a training step, after the run folder was written.
        length = len(typing.get_args(hint))
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ConfigError(f"{key} must be a list of {length} numbers, got {value!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of {length} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a text, got {value!r}")
        return value
    return value


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted-key overrides such as {"pretrain.epochs": 5} with the same type checks."""
    d = to_dict(cfg)
    for key, value in overrides.items():
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config key: {key}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key: {key}")
        node[leaf] = value
    return validate(from_dict(d))


def save(cfg: RunConfig, path: Path) -> None:
    from engine.runs.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def load(path: Path) -> RunConfig:
    """Read and validate a config file; every problem is a ConfigError that names the file.

    The file is looked at before it is opened: a named pipe would block the read forever, and a device
    or a huge file would be read whole into memory.
    """
    path = Path(path)
    require_regular_file(path, "config file", "a JSON file", max_bytes=MAX_CONFIG_BYTES)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:  # removed since the check
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} is not readable JSON ({e})") from None
    except RecursionError:  # e.g. "[[[[...": the parser gives up before any config could be built
        raise ConfigError(f"config file {path} is not readable JSON (nested too deeply)") from None
    try:
        return validate(from_dict(d))
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
