"""Speed of per-image SimCLR views for a batch, on this machine's CPU.

Compares three ways to give every image of a batch its own random crop, flip, jitter and grayscale:
    1. ours      engine.method.augment.BatchAugment (one grid_sample + broadcast per-image colour factors)
    2. kornia    kornia.augmentation.AugmentationSequential with the same ops, same_on_batch=False
    3. tv-loop   torchvision.transforms.v2 applied image by image in a Python loop (torchvision draws one
                 set of parameters per call, so a loop is its only per-image option)
Each timed call turns a uint8 NHWC batch (the image-cache layout) into one normalised float view.

    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/augment_speed.py            # writes bench/results/augment_speed.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` lives in the repository root

from bench.common import cpu_model  # noqa: E402
from engine.config import AugmentConfig  # noqa: E402
from engine.method.augment import BatchAugment  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
Augmenter = Callable[[torch.Tensor], torch.Tensor]


def ours(cfg: AugmentConfig, size: int) -> Augmenter:
    aug = BatchAugment(cfg, out_size=size, mean=MEAN, std=STD)
    return lambda x: aug(x)  # type: ignore[return-value]


def kornia_sequential(cfg: AugmentConfig, size: int, cropping_mode: str) -> Augmenter:
    import kornia.augmentation as K

    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=cfg.crop_scale, ratio=cfg.crop_ratio, cropping_mode=cropping_mode),
        K.RandomHorizontalFlip(p=cfg.flip_p),
        K.ColorJitter(*cfg.jitter, p=cfg.jitter_p),
        K.RandomGrayscale(p=cfg.gray_p),
        K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
        same_on_batch=False,
    )
    return lambda x: pipeline(x.permute(0, 3, 1, 2).float().div(255))


def torchvision_loop(cfg: AugmentConfig, size: int) -> Augmenter:
    per_image = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(p=cfg.flip_p),
            v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
            v2.RandomGrayscale(p=cfg.gray_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    return lambda x: torch.stack([per_image(img) for img in x.permute(0, 3, 1, 2)])


def time_per_batch(fn: Augmenter, x: torch.Tensor, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call, one entry per repeat (the machine may be shared: report the median)."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
        assert out.shape == (x.shape[0], 3, x.shape[1], x.shape[2]), out.shape
    return times


def load_average() -> str:
    """The machine may be shared; the load tells how much to trust absolute numbers."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per method (tv-loop: a third)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "augment_speed.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
    cfg = AugmentConfig()

    methods: list[tuple[str, Callable[[], Augmenter], int]] = [
        ("ours (engine.method.augment)", lambda: ours(cfg, args.size), args.repeats),
        ("kornia 'slice' crop", lambda: kornia_sequential(cfg, args.size, "slice"), args.repeats),
        ("kornia 'resample' crop", lambda: kornia_sequential(cfg, args.size, "resample"), args.repeats),
        ("torchvision v2 per-image loop", lambda: torchvision_loop(cfg, args.size), max(3, args.repeats // 3)),
    ]
    rows: list[tuple[str, float, float]] = []  # name, median s/batch, images/s
    for name, build, repeats in methods:
        try:
            fn = build()
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        median = statistics.median(time_per_batch(fn, x, repeats))
        rows.append((name, median, args.batch / median))
        print(f"{name:32s} {median * 1000:9.1f} ms/batch {args.batch / median:10.0f} images/s", flush=True)

    report = render(rows, args, argv)
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}")
    return 0


def render(rows: list[tuple[str, float, float]], args: argparse.Namespace, argv: list[str] | None) -> str:
    base = rows[0][2]
    try:
        import kornia

        kornia_version = kornia.__version__
    except ImportError:
        kornia_version = "not installed"
    command = " ".join(["python bench/augment_speed.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# SimCLR view augmentation speed (CPU)",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, torch threads: {args.threads}, load average at the end: {load_average()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, kornia {kornia_version}, "
        f"Python {platform.python_version()}",
        f"- workload: batch {args.batch} of {args.size}x{args.size} uint8 NHWC images -> one normalised float view "
        f"(RandomResizedCrop scale (0.2, 1), flip 0.5, ColorJitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2); "
        f"median of {args.repeats} timed batches after 2 warm-up batches (torchvision loop: a third as many)",
        f"- command: `{command}`",
        "",
        "| method | ms / batch | images / s | relative to ours |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {s * 1000:.1f} | {ips:,.0f} | {ips / base:.2f}x |" for name, s, ips in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
