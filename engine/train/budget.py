"""`fit --budget 10m`: size the epochs so that phase (a) ends within the time a person gives it.

The machine's speed is measured, not assumed: a few training steps of each kind (a SimCLR step on two
views, a classifier step, an evaluation pass) are timed on random images of the run's size and batch,
after one untimed step that pays for the first-call costs. Then

    seconds(a) = fixed + e_p * N * t_simclr + e_c * N * t_classifier + min(k, e_c) * N * t_score

where `fixed` is the work that does not depend on the epochs (decoding, the warm-up's one feature pass,
the final predictions, the mixture, the bar's folds and the map), and the pre-training and classifier
epochs keep the ratio of the profile the run starts from (e_p / e_c), which is what its defaults were
tuned with. The sized epochs are written into config.json with the budget, so a resumed run trains
exactly what was planned, whatever the machine's speed is then.

The budget sizes only the epochs a person did not set: `--epochs` or `--pretrain-epochs` on the same
command keep their values, and the budget goes to the rest.

Without a budget, the CPU profile has a ceiling (`time_limit_s`, `fit --time-limit`): the profile's epochs
stay unless this machine would need longer than the ceiling for them, and are then shrunk to fit. Under the
automatic ceiling a run of FILL_MIN_N images or more also grows its pre-training to fill it (`filled`), so the defaults
use the minutes they promise on a fast CPU as on a slow one. Two cores of one CPU train SimCLR at 60
images/s and of another at 540 (AVX2 fp32 against AVX-512 bf16, bench/results/throughput_cpu*.md), so fixed
epochs alone would finish the bundled sample in 2 minutes on one machine and 15 on the other.
`auto_time_limit` is the default ceiling by image count.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from engine.config import AUTO_TIME_LIMIT, RunConfig
from engine.method.augment import BatchAugment, supervised_augment, to_model_input
from engine.method.losses import nt_xent
from engine.method.models import build_network
from engine.train.device import Runtime, autocast

# The median of single timed steps after two untimed ones: with one untimed step and the mean of three, the
# plans of two runs of the same 5,000 images on the same idle 2-core AVX-512 CPU differed by a quarter
# (73 + 36 against 92 + 46 epochs for 600 s) and one run took 366 s of the 581 planned; with this, a
# 5,000-image run planned 439 s and took 439 s (README, Results).
_WARM_STEPS = 2
_TIMED_STEPS = 5
# Work that does not scale with the epochs, per image (decoding at the working size, the bar's folds,
# the map's neighbour graph), plus a constant for the mixture and the map's set-up. Measured on two
# CPU cores (bench/results/budget.md); generous, since finishing early is better than late.
_FIXED_PER_IMAGE_S = 0.004
_FIXED_S = 20.0


@dataclass(frozen=True)
class StepCosts:
    """Seconds per image of each kind of work, on this machine, at this size and batch."""

    simclr: float  # one SimCLR step (two augmented views, forward + backward)
    classifier: float  # one classifier step (augmented, forward + backward)
    score: float  # one evaluation pass (forward only)


# Seconds per image of each kind of work on the slowest machine we plan for (about 3x slower than the
# slowest measured, 60 SimCLR images/s): when even these fit the ceiling, the speed is not measured at
# all, which keeps small runs (and the test suite) free of the few seconds a measurement costs.
SLOWEST = StepCosts(simclr=0.05, classifier=0.015, score=0.005)


def measure(cfg: RunConfig, rt: Runtime, num_classes: int) -> StepCosts:
    """Time the three kinds of work on random images (the network is thrown away afterwards)."""
    size, batch = cfg.data.image_size, max(2, cfg.classify.batch_size)
    net = build_network(cfg.model, image_size=size, num_classes=num_classes, device_type=rt.device.type)
    net = net.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=rt.device)
    y = torch.randint(0, num_classes, (batch,), device=rt.device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    aug = BatchAugment(cfg.augment, out_size=size, mean=mean, std=std)

    def simclr() -> None:
        with autocast(rt):
            z = net.project(torch.cat([aug(x), aug(x)]))
        loss = nt_xent(*z.float().chunk(2), temperature=cfg.pretrain.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def classifier() -> None:
        net.train()
        with autocast(rt, classifier=True):
            logits = net(supervised_augment(x, out_size=size, mean=mean, std=std))
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def score() -> None:
        net.eval()
        net.classifier(net.features(to_model_input(x, out_size=size, mean=mean, std=std)))

    return StepCosts(_per_image(simclr, rt, batch), _per_image(classifier, rt, batch), _per_image(score, rt, batch))


def _per_image(step: Callable[[], None], rt: Runtime, batch: int) -> float:
    for _ in range(_WARM_STEPS):  # first-call costs (allocations, kernel choice) are not the run's speed
        step()
    times = []
    for _ in range(_TIMED_STEPS):
        _sync(rt)
        t0 = time.perf_counter()
        step()
        _sync(rt)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def _sync(rt: Runtime) -> None:
    if rt.is_cuda:
        torch.cuda.synchronize(rt.device)


# The default ceiling (`time_limit_s` = auto): 2.5 minutes up to 2,000 images (the bundled sample ends
# within 3 minutes, app start included), rising linearly to 10 minutes at 5,000 images and capped there.
_AUTO_LIMIT_SMALL_S, _AUTO_LIMIT_SMALL_N = 150.0, 2000
_AUTO_LIMIT_LARGE_S, _AUTO_LIMIT_LARGE_N = 600.0, 5000


CLASSIFIER_SHARE = 0.5  # of the profile's classifier epochs, kept while pre-training shrinks (capped)
# A small overshoot shortens pre-training alone while it keeps this share of its epochs (capped): without
# this step a run a few seconds over its limit lost half its classifier epochs at once.
PRETRAIN_SHARE = 0.5


def auto_time_limit(n: int) -> float:
    """The default ceiling of phase (a), in seconds, for `n` images."""
    if n <= _AUTO_LIMIT_SMALL_N:
        return _AUTO_LIMIT_SMALL_S
    rise = (_AUTO_LIMIT_LARGE_S - _AUTO_LIMIT_SMALL_S) / (_AUTO_LIMIT_LARGE_N - _AUTO_LIMIT_SMALL_N)
    return min(_AUTO_LIMIT_LARGE_S, _AUTO_LIMIT_SMALL_S + rise * (n - _AUTO_LIMIT_SMALL_N))


def time_limit(cfg: RunConfig, n: int) -> float:
    """`cfg.time_limit_s` in seconds for `n` images (0: no ceiling)."""
    return auto_time_limit(n) if cfg.time_limit_s == AUTO_TIME_LIMIT else max(0.0, cfg.time_limit_s)


def fits_on_any_machine(cfg: RunConfig, n: int, limit: float) -> bool:
    """Whether `cfg`'s epochs fit `limit` even on the slowest machine planned for (no measurement needed).

    SLOWEST is for 32 px through the standard stem; the work grows with the pixels, and the small stem
    (no stride-2 conv, no max-pool) does about 16x the work at the same size (bench/throughput.py)."""
    scale = max(1.0, (cfg.data.image_size / 32) ** 2) * (16.0 if cfg.model.stem == "small" else 1.0)
    slowest = StepCosts(*(scale * c for c in (SLOWEST.simclr, SLOWEST.classifier, SLOWEST.score)))
    return estimate_seconds(cfg, n, slowest) <= limit


def capped(cfg: RunConfig, n: int, costs: StepCosts, limit: float, *,
           set_by_hand: frozenset[str] = frozenset()) -> RunConfig:
    """`cfg` with its epochs shrunk, never grown, so that phase (a) fits `limit` seconds on this machine.

    The classifier's epochs are cut last. Where pre-training alone can give way and keep at least
    PRETRAIN_SHARE of its epochs, only it shrinks. Otherwise it gives way down to one epoch while the
    classifier keeps half the profile's (CLASSIFIER_SHARE); only then does the classifier shrink too.
    Measured on the bundled sample on a 2-core AVX2 CPU, both near 130 s: the profile's ratio kept
    (2 + 2 epochs) gave F1 0.68 and exported labels 90.0 % right; 1 + 5 gave F1 0.91 and 95.6 %.
    """
    if limit <= 0 or estimate_seconds(cfg, n, costs) <= limit:
        return cfg
    pretrain_free = cfg.pretrain.enabled and "pretrain.epochs" not in set_by_hand
    classify_free = "classify.epochs" not in set_by_hand
    if pretrain_free:
        alone = plan(replace(cfg, budget_s=limit), n, costs, set_by_hand=set_by_hand | {"classify.epochs"})
        if (alone.pretrain.epochs >= max(1, math.ceil(cfg.pretrain.epochs * PRETRAIN_SHARE))
                and estimate_seconds(alone, n, costs) <= limit):
            return replace(cfg, pretrain=replace(cfg.pretrain, epochs=min(cfg.pretrain.epochs, alone.pretrain.epochs)))
    if pretrain_free and classify_free:
        kept = min(cfg.classify.epochs, max(1, math.ceil(cfg.classify.epochs * CLASSIFIER_SHARE)))
        first = replace(cfg, budget_s=limit, classify=replace(cfg.classify, epochs=kept))
        sized = plan(first, n, costs, set_by_hand=set_by_hand | {"classify.epochs"})
        if estimate_seconds(sized, n, costs) > limit:  # one pre-training epoch is all there is room for
            one = replace(sized, pretrain=replace(sized.pretrain, epochs=1))
            sized = plan(one, n, costs, set_by_hand=set_by_hand | {"pretrain.epochs"})
    else:
        sized = plan(replace(cfg, budget_s=limit), n, costs, set_by_hand=set_by_hand)
    return replace(cfg, pretrain=replace(cfg.pretrain, epochs=min(cfg.pretrain.epochs, sized.pretrain.epochs)),
                   classify=replace(cfg.classify, epochs=min(cfg.classify.epochs, sized.classify.epochs)))


# From this many images on, the auto ceiling is also the target: a CPU fast enough to finish the profile's
# epochs well inside it pre-trains longer (`filled`). On a 2-core AVX-512 CPU the former profile's 24 + 12 epochs
# took 134-148 s of the 600 s for 5,000 CIFAR images; filling the time (73 + 36 epochs) lifted the classifier's
# test accuracy from 0.577 to 0.649 and the ranking's AUROC from 0.904 to 0.929 on 40 % symmetric noise (README,
# Results), the classifier's 36 epochs that the CPU profile now trains everywhere included.
# Below it (the bundled sample, small uploads, the test suite) the profile's epochs stay: quick, and measured.
FILL_MIN_N = 2000
FILL_SHARE = 0.9  # of the ceiling: the estimate's error is on both sides, and finishing early beats late
MAX_GROWTH = 4  # times the profile's pre-training epochs, at most


def fills(auto_limit: bool, n: int) -> bool:
    """Whether a run of `n` images under the automatic ceiling grows its epochs to fill it."""
    return auto_limit and n >= FILL_MIN_N


def filled(cfg: RunConfig, n: int, costs: StepCosts, limit: float, *,
           set_by_hand: frozenset[str] = frozenset()) -> RunConfig:
    """`cfg` with its pre-training epochs, where a person did not set them, grown to fill FILL_SHARE of
    `limit` on this machine (never beyond MAX_GROWTH times the profile's, never below it); shrunk as
    `capped` does when even the profile's epochs would not fit.

    The classifier keeps the profile's epochs. Its features learn the given labels the longer it trains,
    and the relabel bar's competence (engine.method.relabel) is measured out of fold on those features:
    on a fast CPU, 48 classifier epochs on 5,000 CIFAR-10 images with no wrong label reached 0.940 of the
    0.95 bar with a shared variance, and the per-component split of the CPU profile raises it (0.871 ->
    0.911 at 36 epochs). Beyond the 36 epochs measured, a classifier could clear the bar on clean data and
    change right labels; SimCLR learns no label, so the time left goes to pre-training (README, Results).
    """
    if limit <= 0 or estimate_seconds(cfg, n, costs) > FILL_SHARE * limit:
        return capped(cfg, n, costs, limit, set_by_hand=set_by_hand)
    if not cfg.pretrain.enabled or "pretrain.epochs" in set_by_hand:
        return cfg
    sized = plan(replace(cfg, budget_s=FILL_SHARE * limit), n, costs, set_by_hand=set_by_hand | {"classify.epochs"})
    epochs = min(max(cfg.pretrain.epochs, sized.pretrain.epochs), MAX_GROWTH * max(cfg.pretrain.epochs, 1))
    return replace(cfg, pretrain=replace(cfg.pretrain, epochs=epochs))


# The CPU profile's mixture, one variance per component, is measured for a classifier of 36 epochs. One that
# trains fewer (a time limit or a person cut them) splits with one shared variance: the clean losses of a
# shorter-trained classifier spread wider, and per-component variances then flag too many. Measured on
# CIFAR-10N aggre, 5,000 images, shared -> per component (bench/results/flag_count_cpu-profile-12-36.md):
# 12 epochs 1.18x -> 2.99x the wrong labels (F1 0.453 -> 0.385), 18 epochs 1.22x -> 2.75x (0.416 -> 0.390);
# at 36 epochs 0.92x -> 1.63x but F1 0.478 -> 0.487, and on the heavy-noise cases 0.511 -> 0.718
# (config.cpu_profile). The bundled sample at 18 epochs: F1 0.986 either way.
LONG_TRAINED_EPOCHS = 30


def split_for_epochs(cfg: RunConfig) -> RunConfig:
    """`cfg` with a shared-variance mixture where its per-component one was chosen for a longer-trained
    classifier than `cfg` trains (LONG_TRAINED_EPOCHS)."""
    if cfg.split.covariance == "full" and cfg.classify.epochs < LONG_TRAINED_EPOCHS:
        return replace(cfg, split=replace(cfg.split, covariance="tied"))
    return cfg


def fixed_seconds(cfg: RunConfig, n: int, costs: StepCosts) -> float:
    """Phase (a)'s work that does not depend on the epochs."""
    warmup_pass = n * costs.score if cfg.pretrain.enabled and cfg.classify.warmup_epochs else 0.0
    return _FIXED_S + n * _FIXED_PER_IMAGE_S + warmup_pass + n * costs.score  # + the final predictions


def estimate_seconds(cfg: RunConfig, n: int, costs: StepCosts) -> float:
    """What phase (a) should take with `cfg`'s epochs."""
    pretrain = cfg.pretrain.epochs * n * costs.simclr if cfg.pretrain.enabled else 0.0
    train = cfg.classify.epochs * n * costs.classifier
    scoring = min(cfg.split.average_last, cfg.classify.epochs) * n * costs.score
    return fixed_seconds(cfg, n, costs) + pretrain + train + scoring


def plan(cfg: RunConfig, n: int, costs: StepCosts, *, set_by_hand: frozenset[str] = frozenset()) -> RunConfig:
    """`cfg` with the epochs that fill `cfg.budget_s` for `n` images (at least one of each that runs).

    set_by_hand: the dotted keys ("pretrain.epochs", "classify.epochs") a person chose; they stay.
    """
    budget = cfg.budget_s
    if budget <= 0 or n < 2:
        return cfg
    pretrain_on = cfg.pretrain.enabled and "pretrain.epochs" not in set_by_hand
    classify_free = "classify.epochs" not in set_by_hand
    ratio = cfg.pretrain.epochs / max(cfg.classify.epochs, 1) if cfg.pretrain.enabled else 0.0
    left = budget - fixed_seconds(cfg, n, costs)
    if not pretrain_on and cfg.pretrain.enabled:
        left -= cfg.pretrain.epochs * n * costs.simclr
    if not classify_free:
        left -= cfg.classify.epochs * n * (costs.classifier + costs.score)
    per_classify_epoch = n * (costs.classifier + costs.score / 2)  # the scoring passes of the last epochs, spread
    if classify_free and pretrain_on:
        e_c = left / (ratio * n * costs.simclr + per_classify_epoch)
        e_p = ratio * e_c
    elif classify_free:
        e_c, e_p = left / per_classify_epoch, float(cfg.pretrain.epochs)
    elif pretrain_on:
        e_c, e_p = float(cfg.classify.epochs), left / (n * costs.simclr)
    else:
        return cfg
    return replace(cfg, pretrain=replace(cfg.pretrain, epochs=max(1, math.floor(e_p)) if pretrain_on
                                         else cfg.pretrain.epochs),
                   classify=replace(cfg.classify, epochs=max(1, math.floor(e_c)) if classify_free
                                    else cfg.classify.epochs))
