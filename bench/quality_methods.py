"""The label-error detectors that bench/quality.py runs side by side on one case.

    clean         CLeaN default: SimCLR pre-training + ELR classifier + GMM on per-sample losses
                  (`python -m engine fit --finetune`): one run scored after phase (a) and after phase (b)
    clean-ce      the same with --loss ce
    clean-nflrce  the same with --loss nfl+rce
    clean-mixup   the same with --loss mixup-boot (mixup + dynamic bootstrapping, Arazo et al. 2019)
    no-pretrain   the paper's baseline: the same classifier without pre-training (--no-pretrain)
    cleanlab      cleanlab.filter.find_label_issues on out-of-sample probabilities from K-fold cross-
                  validation of the same network trained from scratch with cross-entropy, same budget
    cleanlab-cnn  the baseline a user would run instead: cleanlab on K-fold out-of-sample probabilities of
                  a plain small CNN, 20 epochs per fold (bench/quality_cnn.py)
    knn           a k-nearest-neighbour vote on the SimCLR features of the clean run's pre-trained encoder

CLeaN runs: bench/quality_clean.py; cleanlab and kNN: bench/quality_baselines.py; the small CNN:
bench/quality_cnn.py; scores of the exported labels: bench/quality_labels.py; this module holds what
they share (settings, result rows, the training budget, data loading and scoring).

Time of a method = its own work: for CLeaN runs the run's stage times (prepare + the fit/finetune
summary seconds) without the UMAP map's stage (a picture for people, not part of the detection); for cleanlab
the prepare, K fold trainings, held-out predictions and cleanlab's two calls; for kNN the SimCLR
pre-training it reuses plus feature extraction and the neighbour search. Test-set evaluation is left
out where it can be separated (cleanlab, kNN); a CLeaN run evaluates its test set once per epoch inside
its train stage (about test/train images of one forward pass per epoch). Pre-training shared between
runs on the same images (quality_clean.PretrainPool) is added to the time of every run that uses it.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METHODS: tuple[str, ...] = ("clean", "clean-ce", "clean-nflrce", "clean-mixup", "no-pretrain", "cleanlab", "cleanlab-cnn",
                             "knn")
# What runs without --methods: clean-mixup only when asked for (bench/results/mixup_boot.md compares it).
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m != "clean-mixup")
FIT_FLAGS: dict[str, list[str]] = {
    "clean": [], "clean-ce": ["--loss", "ce"], "clean-nflrce": ["--loss", "nfl+rce"],
    "clean-mixup": ["--loss", "mixup-boot"], "no-pretrain": ["--no-pretrain"],
}
LABELS: dict[str, str] = {
    "clean": "CLeaN default (ELR)", "clean-ce": "CLeaN, CE loss", "clean-nflrce": "CLeaN, NFL+RCE loss",
    "clean-mixup": "CLeaN, mixup + bootstrapping",
    "no-pretrain": "no pre-training (ELR)", "cleanlab": "cleanlab, CV", "cleanlab-cnn": "cleanlab, small CNN, CV",
    "knn": "kNN vote, SimCLR",
}


@dataclass(frozen=True)
class Settings:
    """What every method of one invocation shares (flags of bench/quality.py)."""

    seed: int = 0
    device: str = "auto"
    pretrain_epochs: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    sets: tuple[str, ...] = ()
    folds: int = 3
    knn_k: int = 10
    cnn_epochs: int = 20  # cleanlab-cnn: epochs per fold
    finetune: bool = True
    share_pretrain: bool = True
    skip_map: bool = True  # leave out the UMAP map of CLeaN runs (quality_clean._without_map)
    quiet: bool = False


@dataclass
class Row:
    """One line of the results table."""

    method: str  # shown name, e.g. "CLeaN default (ELR), after (a)"
    key: str  # METHODS entry
    metrics: dict[str, Any] = field(default_factory=dict)  # engine.review.metrics.detection_metrics
    test_acc: float | None = None
    seconds: float | None = None  # the method's own time (module docstring)
    wall_seconds: float | None = None  # wall time of the whole call, everything included
    note: str = ""
    command: str = ""
    error: str | None = None
    export: dict[str, Any] = field(default_factory=dict)  # quality_labels.label_scores of the exported labels


def release_memory() -> None:
    """Runs share this process: give cached GPU blocks back, or the next run's TrainSet may judge the
    GPU too full to keep its images resident."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ============================================================================================ shared pieces


def training_budget(cfg: Any, n: int) -> int:
    """Image passes CLeaN default trains with in phase (a): 2 views x pretrain epochs x N, plus classifier
    epochs x N. The warm-up trains the head on cached features (one forward pass) and is left out."""
    pretrain = 2 * cfg.pretrain.epochs if cfg.pretrain.enabled else 0
    return (pretrain + cfg.classify.epochs) * n


def fold_epochs(cfg: Any, folds: int) -> int:
    """Epochs per cross-validation fold with the same budget: each fold trains on (K-1)/K of N, so K folds
    of E epochs cost E (K-1) N image passes; E = budget / ((K-1) N), rounded, at least 1."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    pretrain = 2 * cfg.pretrain.epochs if cfg.pretrain.enabled else 0
    return max(1, math.floor((pretrain + cfg.classify.epochs) / (folds - 1) + 0.5))


@dataclass
class Prepared:
    """Decoded images of a case, labels as indices into `classes`, truth as class names."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64 given labels
    classes: tuple[str, ...]
    truth: np.ndarray  # (N,) object, true class names (None where unknown)


def prepare_case(folder: Path, truth: Path, out: Path, image_size: int) -> Prepared:
    from engine.data.cache import prepare
    from engine.data.intake import scan
    from engine.review.metrics import load_truth

    p = prepare(scan(folder, check="header"), out, image_size=image_size)
    return Prepared(np.asarray(p.images), p.labels, p.classes, load_truth(truth, p.paths))


def load_test_split(test: Path | None, classes: tuple[str, ...], out: Path,
                    image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels as indices into `classes`) of a clean test folder, or None."""
    if test is None:
        return None
    from engine.data.cache import prepare
    from engine.data.intake import scan

    p = prepare(scan(test, check="header"), out, image_size=image_size)
    unknown = sorted(set(p.classes) - set(classes))
    if unknown:
        raise ValueError(f"the test folder {test} has classes the training data lacks: {', '.join(unknown)}")
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray(p.images), np.array([index[p.classes[j]] for j in p.labels], dtype=np.int64)


def score(d: Prepared, flagged: np.ndarray, clean_prob: np.ndarray, predicted: np.ndarray,
          corrected: np.ndarray) -> dict[str, Any]:
    """engine.review.metrics.detection_metrics with index labels turned into class names."""
    from engine.review.metrics import detection_metrics

    names = np.array(d.classes, dtype=object)
    return detection_metrics(given=names[d.labels], true=d.truth, flagged=flagged, clean_prob=clean_prob,
                             predicted=names[predicted], corrected=names[corrected])
