"""`cleanlab-cnn`: the baseline a user would run instead of CLeaN, written the way such a user writes it.

A plain small CNN trained from scratch with cross-entropy in K-fold cross-validation (default 3 folds,
20 epochs per fold), its out-of-fold probabilities into cleanlab's `find_label_issues` with the default
filter, and `get_label_quality_scores` for the ranking. Nothing of CLeaN's is used but the decoded image
cache (the same pixels at the same size as the CLeaN runs see), so the comparison measures the method,
not the decoder.

Network: three blocks of 3x3 conv (32, 64, 128 channels) + BatchNorm + ReLU + 2x2 max-pool, global
average pooling (so one network serves 32 px CIFAR-10 and 96 px Imagenette), one linear layer.
Training: SGD momentum 0.9, learning rate 0.05 with a per-step cosine schedule to 0, weight decay 5e-4,
batch 128; augmentation: random crop from a reflect-padded image (1/8 of its side) and horizontal flip.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.quality_baselines import cleanlab_verdict
from bench.quality_data import CaseData
from bench.quality_labels import scores_of_arrays
from bench.quality_methods import LABELS, Row, Settings, load_test_split, prepare_case, release_memory, score

CHANNELS: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True)
class CnnRecipe:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


def small_cnn(num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for cout in CHANNELS:
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def to_tensor(images_nhwc: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW on `device`, once: the small network is too cheap to hide a
    per-batch conversion."""
    pixels = np.array(images_nhwc, dtype=np.uint8)  # a writable copy: the decoded cache is a read-only memmap
    x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding of 1/8 of the side, every image its own offset) and horizontal flip."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    flip = torch.rand(b, generator=generator).lt(0.5).tolist()
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def train_cnn(x: torch.Tensor, y: torch.Tensor, num_classes: int, recipe: CnnRecipe, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = small_cnn(num_classes).to(x.device)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(x) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(recipe.epochs):
        for index in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            if len(index) < 2:  # BatchNorm cannot normalise a batch of one image
                continue
            index = index.to(x.device)
            loss = nn.functional.cross_entropy(net(augment(x[index], gen)), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net


@torch.no_grad()
def predict_probs(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    net.eval()
    out = [torch.softmax(net(x[i:i + batch_size]).float(), dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def out_of_fold_probs(x: torch.Tensor, labels: np.ndarray, num_classes: int, recipe: CnnRecipe, *, folds: int,
                      seed: int, test_x: torch.Tensor | None = None,
                      say: Callable[[str], None] = print) -> tuple[np.ndarray, list[np.ndarray], float]:
    """(out-of-fold probabilities (N, C), test probabilities of each fold model, seconds spent on the test)."""
    from sklearn.model_selection import StratifiedKFold

    y = torch.from_numpy(labels).to(x.device)
    probs = np.zeros((len(labels), num_classes), np.float32)
    test_probs: list[np.ndarray] = []
    test_seconds = 0.0
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    for f, (fit_rows, held_rows) in enumerate(split):
        t0 = time.perf_counter()
        fit = torch.from_numpy(fit_rows).to(x.device)
        net = train_cnn(x[fit], y[fit], num_classes, recipe, seed + 100 * f)
        probs[held_rows] = predict_probs(net, x[torch.from_numpy(held_rows).to(x.device)])
        say(f"   cleanlab-cnn: fold {f + 1}/{folds}, {recipe.epochs} epochs on {len(fit_rows):,} images, "
            f"{time.perf_counter() - t0:.0f} s")
        if test_x is not None:
            t_test = time.perf_counter()
            test_probs.append(predict_probs(net, test_x))
            test_seconds += time.perf_counter() - t_test
        del net
        release_memory()
    return probs, test_probs, test_seconds


def run_cleanlab_cnn(data: CaseData, work: Path, cfg: Any, s: Settings, say: Callable[[str], None] = print) -> Row:
    """K-fold small CNN + cleanlab on the case's images at the CLeaN runs' image size.

    Flags: find_label_issues(labels, pred_probs) (default filter); AUROC ranking: get_label_quality_scores
    (its default, self_confidence); exported label of a flagged image: argmax of its out-of-fold
    probabilities. Test accuracy: the mean over the K fold models.
    """
    from engine.train.device import resolve_device

    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    recipe = CnnRecipe(epochs=s.cnn_epochs)
    d = prepare_case(data.train, data.truth, work / "data", cfg.data.image_size)
    sample = np.asarray(d.images[:: max(1, len(d.images) // 1000)], dtype=np.float32) / 255  # ~1,000 images suffice
    mean = torch.from_numpy(sample.mean(axis=(0, 1, 2))).to(device)
    std = torch.from_numpy(np.maximum(sample.std(axis=(0, 1, 2)), 0.05)).to(device)  # a flat channel must not blow up
    x = to_tensor(np.asarray(d.images), mean, std, device)
    t_test = time.perf_counter()
    test = load_test_split(data.test, d.classes, work / "test_data", cfg.data.image_size)
    test_x = to_tensor(test[0], mean, std, device) if test is not None else None
    test_seconds = time.perf_counter() - t_test
    probs, test_probs, fold_test_seconds = out_of_fold_probs(x, d.labels, len(d.classes), recipe, folds=s.folds,
                                                             seed=s.seed, test_x=test_x, say=say)
    flagged, quality, predicted, corrected = cleanlab_verdict(d.labels, probs)
    seconds = time.perf_counter() - t0 - test_seconds - fold_test_seconds
    test_acc = None
    note = f"{s.folds} folds x {recipe.epochs} epochs from scratch, small CNN {'-'.join(map(str, CHANNELS))}, CE"
    if test is not None:
        test_acc = round(float(np.mean([(p.argmax(1) == test[1]).mean() for p in test_probs])), 4)
        ensemble = float((np.mean(test_probs, axis=0).argmax(1) == test[1]).mean())
        note += f"; test acc of the averaged fold models {ensemble:.4f}"
    return Row(f"{LABELS['cleanlab-cnn']} ({s.folds}-fold)", "cleanlab-cnn",
               score(d, flagged, quality, predicted, corrected), test_acc, round(seconds, 1),
               round(time.perf_counter() - t0, 1), note, "cleanlab.filter.find_label_issues(labels, pred_probs)",
               export=scores_of_arrays(d.classes, d.labels, d.truth, flagged, corrected))
