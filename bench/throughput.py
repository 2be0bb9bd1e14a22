#!/usr/bin/env python3
"""SimCLR pre-training throughput: our loop against a plain reference loop, side by side, one run.

    .venv/bin/python bench/throughput.py                 # CPU, writes bench/results/throughput_cpu.md
    .venv/bin/python bench/throughput.py --device cuda   # GPU, writes bench/results/throughput_cuda.md
    .venv/bin/python bench/throughput.py --data DIR      # any CIFAR-like class-folder tree instead

Both loops train the same network (engine.method.models.build_network with the run's default config), with
the same batch size, optimiser, NT-Xent loss and SimCLR augmentation recipe, on the same 5,000
CIFAR-10 PNGs (../shared/data, written once into bench/data/cifar10-5k):

    ours       the decoded uint8 cache (engine.data.cache, decoded once, not timed here) resident on the
               training device, batched per-image augmentation on that device (engine.method.augment),
               channels_last, bf16 autocast on CUDA
    reference  torchvision ImageFolder + PIL transforms (RandomResizedCrop, flip, ColorJitter p=0.8,
               RandomGrayscale) in a DataLoader that decodes every PNG every epoch, workers 0 and 2

The methods are interleaved over --rounds rounds and each reports the median images/s (dataset images,
two views each), so a passing load spike hits every method alike. The speed-up is ours / the best
reference. The floating-point work of one of our steps is counted (torch.utils.flop_counter), and on a
GPU with a known bf16 peak the report says how close an epoch of 50,000 images comes to the time that
work would take at that peak (about 0.35 s for the small-stem ResNet-18 on an H100).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import DATA, RESULTS, ensure_cifar10, machine_lines  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.data.cache import is_prepared, load_prepared, prepare  # noqa: E402
from engine.data.intake import scan  # noqa: E402
from engine.method.augment import BatchAugment, two_views  # noqa: E402
from engine.method.losses import nt_xent  # noqa: E402
from engine.method.models import build_network, resolve_stem, set_trainable  # noqa: E402
from engine.train.classify import Normalisation  # noqa: E402
from engine.train.device import Runtime, autocast, make_runtime  # noqa: E402
from engine.train.trainset import TrainSet, epoch_batches  # noqa: E402

Step = Callable[[torch.Tensor, torch.Tensor], None]
EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch
# Dense bf16 tensor-core peaks (vendor data sheets, FLOP/s), by a part of the name torch reports.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12,
             "L4": 121e12, "A10": 125e12}


def make_step(rt: Runtime, cfg: RunConfig, num_classes: int) -> tuple[torch.nn.Module, Step]:
    """One SimCLR optimisation step on two view batches; identical for both loops."""
    torch.manual_seed(0)
    net = build_network(cfg.model, image_size=cfg.data.image_size, num_classes=num_classes,
                        device_type=rt.device.type).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    set_trainable(net, encoder=True, projector=True, classifier=False)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.06, momentum=0.9, weight_decay=5e-4)

    def step(v0: torch.Tensor, v1: torch.Tensor) -> None:
        with autocast(rt):
            z = net.project(torch.cat([v0, v1]))
        z0, z1 = z.float().chunk(2)
        loss = nt_xent(z0, z1, temperature=cfg.pretrain.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, step


def ours_batches(data: TrainSet, aug: BatchAugment, batch_size: int, seed: int) -> Iterator[tuple]:
    order = torch.Generator().manual_seed(seed)
    gen = torch.Generator(device=data.device).manual_seed(seed)
    while True:
        for index in epoch_batches(len(data), batch_size, order, drop_last=True):
            yield two_views(aug, data.batch(index), gen)


def reference_batches(folder: Path, cfg: RunConfig, norm: Normalisation, batch_size: int, workers: int,
                      rt: Runtime) -> Iterator[tuple]:
    from torchvision import datasets, transforms

    a = cfg.augment
    view = transforms.Compose([
        transforms.RandomResizedCrop(cfg.data.image_size, scale=a.crop_scale, ratio=a.crop_ratio),
        transforms.RandomHorizontalFlip(a.flip_p),
        transforms.RandomApply([transforms.ColorJitter(*a.jitter)], p=a.jitter_p),
        transforms.RandomGrayscale(a.gray_p),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])
    dataset = datasets.ImageFolder(str(folder), transform=lambda im: (view(im), view(im)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=rt.is_cuda)
    memory = torch.channels_last if rt.channels_last else torch.contiguous_format
    while True:
        for (v0, v1), _ in loader:
            yield (v0.to(rt.device, non_blocking=True).contiguous(memory_format=memory),
                   v1.to(rt.device, non_blocking=True).contiguous(memory_format=memory))


def flops_per_image(batches: Iterator[tuple], step: Step, batch_size: int) -> float:
    """Floating-point operations of one training step (forward and backward of both views), per dataset image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(*next(batches))
    return counter.get_total_flops() / batch_size


def peak_flops(device_name: str | None) -> tuple[str, float] | None:
    for part, peak in sorted(BF16_PEAK.items(), key=lambda kv: -len(kv[0])):  # GH200 before H200
        if device_name and part in device_name:
            return part, peak
    return None


def timed(batches: Iterator[tuple], step: Step, steps: int, batch_size: int, rt: Runtime) -> float:
    """images/s over `steps` steps after two warm-up steps (first batches, cuDNN autotuning)."""
    for _ in range(2):
        step(*next(batches))
    if rt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    if rt.is_cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--batch-size", type=int, default=None, help="default: the device profile's pre-training batch")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default="0,2", help="DataLoader workers of the reference loop to try")
    p.add_argument("--data", type=Path, default=None, help="class-folder tree of small images (default: 5,000 "
                   "CIFAR-10 PNGs written once into bench/data/cifar10-5k from ../shared/data)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    rt = make_runtime(a.device)
    cfg = RunConfig()
    if rt.is_cuda:
        from engine.config import gpu_profile

        cfg = gpu_profile(cfg)
    batch_size = a.batch_size or cfg.pretrain.batch_size
    folder = a.data or ensure_cifar10(DATA / "cifar10-5k")
    record = scan(folder, check="header")
    cache = folder.parent / f"{folder.name}-cache"
    prepared = load_prepared(cache) if is_prepared(cache, record, cfg.data.image_size) else prepare(
        record, cache, image_size=cfg.data.image_size)
    images = np.asarray(prepared.images)
    norm = Normalisation.of(images)
    data = TrainSet.from_numpy(images, prepared.labels, rt.device)
    aug = BatchAugment(cfg.augment, out_size=cfg.data.image_size, mean=norm.mean, std=norm.std)
    _, step = make_step(rt, cfg, len(prepared.classes))
    fp32 = replace(rt, amp_dtype=None, classifier_amp_dtype=None)
    _, step32 = make_step(fp32, cfg, len(prepared.classes))
    precision = "bf16 autocast" if rt.amp_dtype is not None else "fp32"
    methods: dict[str, tuple[Iterator[tuple], Step]] = {
        f"ours ({precision}: the default here)": (ours_batches(data, aug, batch_size, 0), step)}
    if rt.amp_dtype is not None:
        methods["ours (fp32)"] = (ours_batches(data, aug, batch_size, 0), step32)
    for w in (int(x) for x in a.workers.split(",")):
        methods[f"reference (DataLoader + PIL, {w} workers, fp32)"] = (
            reference_batches(folder, cfg, norm, batch_size, w, rt), step32)
    flops = flops_per_image(*methods[next(iter(methods))], batch_size)
    speeds: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(a.rounds):
        for name, (batches, method_step) in methods.items():
            speeds[name].append(timed(batches, method_step, a.steps, batch_size, rt))
            print(f"round {r + 1}/{a.rounds}  {name:<42} {speeds[name][-1]:8.1f} images/s", flush=True)
    median = {name: statistics.median(v) for name, v in speeds.items()}
    ours = median[next(iter(median))]
    best_ref = max(v for k, v in median.items() if k.startswith("reference"))
    table = ["| loop | images/s (median) | all rounds | relative to best reference |", "|---|---:|---|---:|"]
    for name, v in median.items():
        table.append(f"| {name} | {v:,.1f} | {', '.join(f'{x:.0f}' for x in speeds[name])} | {v / best_ref:.2f}x |")
    stem = resolve_stem(cfg.model.stem, cfg.data.image_size, rt.device.type)
    target = 3.0 if rt.is_cuda else 1.5
    verdict = "met" if ours / best_ref >= target else "NOT met"
    device_name = torch.cuda.get_device_name(rt.device) if rt.is_cuda else None
    compute = [f"One step of ours does {flops / 1e9:.2f} GFLOP per dataset image (forward and backward of both "
               f"views), {flops * ours / 1e12:.2f} TFLOP/s at the median rate; an epoch of {EPOCH_IMAGES:,} images "
               f"takes {EPOCH_IMAGES / ours:.2f} s."]
    peak = peak_flops(device_name)
    if rt.is_cuda and peak is not None:
        bound = EPOCH_IMAGES * flops / peak[1]
        compute.append(f"At the {peak[0]}'s dense bf16 peak ({peak[1] / 1e12:.0f} TFLOP/s) that work takes "
                       f"{bound:.2f} s: ours reaches **{bound / (EPOCH_IMAGES / ours):.1%}** of the physical limit.")
    elif rt.is_cuda:
        compute.append(f"No bf16 peak is on record for {device_name}: compare the TFLOP/s with its data sheet.")
    report = [
        f"# SimCLR pre-training throughput ({rt.device.type})",
        "",
        *machine_lines(),
        f"- torch {torch.__version__}; network ResNet-18 ({stem} stem), {cfg.data.image_size} px, batch {batch_size}, "
        f"two views per image; {a.rounds} interleaved rounds of {a.steps} steps",
        "- the reference is a plain fp32 loop; ours runs the engine's default numerics on this device "
        "(engine.train.device.make_runtime: bf16 autocast on CUDA and on CPUs with native bf16, else fp32); "
        "the fp32 row isolates what the data path alone gives",
        f"- data: {len(record.samples):,} images from {folder.name}",
        "- command: `python bench/throughput.py" + (" " + " ".join(argv) if argv else "") + "`",
        "",
        *table,
        "",
        f"Speed-up of our loop over the best reference: **{ours / best_ref:.2f}x** (target {target:.1f}x: {verdict}).",
        "",
        " ".join(compute),
        "",
    ]
    out = a.out or RESULTS / f"throughput_{rt.device.type}.md"
    out.write_text("\n".join(report), encoding="utf-8")
    print("\n".join(table))
    print(" ".join(compute))
    print(f"speed-up {ours / best_ref:.2f}x (target {target:.1f}x: {verdict}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
