"""Detectors bench/quality.py compares CLeaN with: cleanlab on cross-validated probabilities of the same
network, and a k-nearest-neighbour vote on the SimCLR features of the clean run's encoder (cleanlab on a
small CNN, the baseline a user would run, is bench/quality_cnn.py; it shares cleanlab_verdict)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_data import CaseData
from bench.quality_labels import scores_of_arrays
from bench.quality_methods import (
    LABELS,
    Row,
    Settings,
    fold_epochs,
    load_test_split,
    prepare_case,
    release_memory,
    score,
    training_budget,
)


def run_cleanlab(data: CaseData, work: Path, cfg: Any, s: Settings, say: Callable[[str], None] = print) -> Row:
    """K-fold cross-validated CE training of the same network from scratch, then cleanlab.

    Flags: cleanlab.filter.find_label_issues(labels, pred_probs) with its default filter
    (prune_by_noise_rate); ranking for AUROC: cleanlab.rank.get_label_quality_scores (self_confidence);
    corrected label of a flagged image: argmax of its out-of-sample probabilities. Test accuracy: the
    mean over the K fold models (each trained on (K-1)/K of the data); the accuracy of their averaged
    probabilities is in the note.
    """
    import torch
    from sklearn.model_selection import StratifiedKFold

    from engine.method.losses import classification_loss
    from engine.method.models import build_network
    from engine.runs.progress import Progress
    from engine.train.classify import Normalisation, predict, train_classifier
    from engine.train.device import make_runtime, seed_everything
    from engine.train.loop import Rng
    from engine.train.trainset import TrainSet

    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    rt = make_runtime(cfg.device, cfg.precision)
    d = prepare_case(data.train, data.truth, work / "data", cfg.data.image_size)
    n, c = len(d.labels), len(d.classes)
    ce = replace(cfg.classify, loss="ce")
    epochs = fold_epochs(cfg, s.folds)
    say(f"   cleanlab: budget B = {training_budget(cfg, n):,} image passes (CLeaN default's phase (a)) -> "
        f"{s.folds} folds x {epochs} epochs on (K-1)/K of {n:,} images = {epochs * (s.folds - 1) * n:,} passes")
    train = TrainSet.from_numpy(d.images, d.labels, rt.device)
    norm = Normalisation.of(d.images)
    t_test = time.perf_counter()
    test = load_test_split(data.test, d.classes, work / "test_data", cfg.data.image_size)
    test_data = TrainSet.from_numpy(test[0], test[1], rt.device) if test is not None else None
    eval_seconds = time.perf_counter() - t_test
    probs = np.zeros((n, c), np.float32)
    test_probs: list[np.ndarray] = []
    folds = StratifiedKFold(n_splits=s.folds, shuffle=True, random_state=s.seed)
    for f, (fit_rows, _) in enumerate(folds.split(np.zeros(n), d.labels)):
        seed_everything(cfg.seed + 100 * f)
        net = build_network(cfg.model, image_size=cfg.data.image_size, num_classes=c,
                            device_type=rt.device.type).to(rt.device)
        if rt.channels_last:
            net = net.to(memory_format=torch.channels_last)
        keep = np.zeros(n, bool)
        keep[fit_rows] = True
        part = train.subset(keep)
        loss_fn = classification_loss(ce, num_samples=len(part), num_classes=c).to(rt.device)
        train_classifier(net, part, part.labels, loss_fn, ce, norm, rt, epochs=epochs,
                         rng=Rng.for_stream(cfg.seed, f"cleanlab/fold{f + 1}", rt.device),
                         last_ckpt=work / f"fold{f + 1}.last.pt", progress=Progress(None, show=not s.quiet),
                         stage=f"cv {f + 1}/{s.folds}")
        probs[np.flatnonzero(~keep)] = predict(net, train.subset(~keep), norm, rt, with_features=False).probs
        if test_data is not None:
            t_test = time.perf_counter()
            test_probs.append(predict(net, test_data, norm, rt, with_features=False).probs)
            eval_seconds += time.perf_counter() - t_test
        del net
        release_memory()
    flagged, quality, predicted, corrected = cleanlab_verdict(d.labels, probs)
    seconds = time.perf_counter() - t0 - eval_seconds
    test_acc, note = None, f"{s.folds} folds x {epochs} epochs from scratch, CE"
    if test is not None:
        per_fold = [float((p.argmax(1) == test[1]).mean()) for p in test_probs]
        test_acc = round(float(np.mean(per_fold)), 4)
        ensemble = float((np.mean(test_probs, axis=0).argmax(1) == test[1]).mean())
        note += f"; test acc of the averaged fold models {ensemble:.4f}"
    metrics = score(d, flagged, quality, predicted, corrected)
    return Row(f"{LABELS['cleanlab']} ({s.folds}-fold)", "cleanlab", metrics, test_acc, round(seconds, 1),
               round(time.perf_counter() - t0, 1), note, "cleanlab.filter.find_label_issues(labels, pred_probs)",
               export=scores_of_arrays(d.classes, d.labels, d.truth, flagged, corrected))


def cleanlab_verdict(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flagged, label quality, predicted, corrected) from out-of-sample probabilities, as a user of cleanlab
    gets them: find_label_issues with its default filter (prune_by_noise_rate), get_label_quality_scores with
    its default method (self_confidence), and the argmax as the suggestion for each flagged image."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = probs / probs.sum(axis=1, keepdims=True)  # cleanlab checks that rows sum to 1; fp32 softmax is off by ~1e-7
    flagged = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    predicted = probs.argmax(axis=1)
    return flagged, quality, predicted, np.where(flagged, predicted, labels)


# ============================================================================================ kNN vote


def knn_vote(neighbour_labels: np.ndarray, given: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Agreement score and plurality label of each image's neighbours.

    Args:
        neighbour_labels: (N, k) labels of each image's k nearest neighbours (the image itself excluded).
        given: (N,) given labels.
        num_classes: C.

    Returns:
        score (N,) = fraction of neighbours with the given label; vote (N,) = the plurality label, where a
        tie with the given label keeps the given label (so vote != given means some other class has
        strictly more votes than the given one).
    """
    n, k = neighbour_labels.shape
    counts = np.zeros((n, num_classes), np.float64)
    np.add.at(counts, (np.repeat(np.arange(n), k), neighbour_labels.ravel()), 1.0)
    agree = counts[np.arange(n), given]
    counts[np.arange(n), given] += 0.5  # tie-break in favour of the given label
    return (agree / k).astype(np.float64), counts.argmax(axis=1)


def run_knn(data: CaseData, clean_run: Path, work: Path, s: Settings, *, pretrain_seconds: float) -> Row:
    """k-NN vote on the L2-normalised SimCLR features of the clean run's pre-trained encoder.

    Flagged: the plurality label of the k nearest neighbours (cosine, self excluded) differs from the
    given label (knn_vote). Corrected label: that plurality label. Test accuracy: each test image gets the
    plurality of its k nearest training images under the corrected labels (ties to the lower class index).
    """
    import torch
    from sklearn.neighbors import NearestNeighbors

    from engine.config import load as load_config
    from engine.method.models import build_network
    from engine.runs.rundir import RunDir
    from engine.train.classify import Normalisation, encode
    from engine.train.device import make_runtime
    from engine.train.trainset import TrainSet

    ckpt = RunDir(clean_run).checkpoint("pretrain")
    if not ckpt.exists():
        return Row(f"{LABELS['knn']} (k={s.knn_k})", "knn", error=f"no pre-trained encoder at {ckpt}")
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = load_config(RunDir(clean_run).config)
    rt = make_runtime(cfg.device, cfg.precision)
    d = prepare_case(data.train, data.truth, work / "data", cfg.data.image_size)
    net = build_network(cfg.model, image_size=cfg.data.image_size, num_classes=len(d.classes),
                        device_type=rt.device.type)
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["net"])
    net = net.to(rt.device)
    norm = Normalisation.of(d.images)  # the statistics the run normalised with (same images, same rule)

    def features(images: np.ndarray) -> np.ndarray:
        x = encode(net, TrainSet.from_numpy(images, np.zeros(len(images), np.int64), rt.device), norm, rt)
        x = x.cpu().numpy().astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train_x = features(d.images)
    k = min(s.knn_k, len(train_x) - 1)
    # On unit vectors Euclidean order is cosine order; sklearn's brute Euclidean search is one BLAS product.
    index = NearestNeighbors(n_neighbors=k).fit(train_x)
    neighbours = index.kneighbors(return_distance=False)  # without X: each image is not its own neighbour
    agreement, vote = knn_vote(d.labels[neighbours], d.labels, len(d.classes))
    flagged = vote != d.labels
    seconds = time.perf_counter() - t0 + pretrain_seconds
    test_acc = None
    test = load_test_split(data.test, d.classes, work / "test_data", cfg.data.image_size)
    if test is not None:
        near = index.kneighbors(features(test[0]), return_distance=False)
        counts = np.zeros((len(near), len(d.classes)))
        np.add.at(counts, (np.repeat(np.arange(len(near)), k), vote[near].ravel()), 1.0)
        test_acc = round(float((counts.argmax(1) == test[1]).mean()), 4)
    metrics = score(d, flagged, agreement, vote, vote)
    return Row(f"{LABELS['knn']} (k={k})", "knn", metrics, test_acc, round(seconds, 1),
               round(time.perf_counter() - t0 + pretrain_seconds, 1),
               f"incl. {pretrain_seconds:.0f} s of the clean run's pre-training", "",
               export=scores_of_arrays(d.classes, d.labels, d.truth, flagged, vote))
