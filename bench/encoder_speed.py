#!/usr/bin/env python3
"""Training-step speed of the encoders on this machine's CPU, side by side in one run.

One step = forward + backward + SGD update of the encoder on a batch of 128 images at 32 px, the work
each classifier step repeats. The encoders alternate, round after round, so a busy machine slows both
alike; the table gives the median images/s of the rounds and the ratio.

    .venv/bin/python bench/encoder_speed.py            # writes bench/results/encoder_speed.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, machine_lines  # noqa: E402
from engine.method.models import SMALL_CNN, Encoder, count_parameters  # noqa: E402

ENCODERS: tuple[tuple[str, str], ...] = (("resnet18", "standard"), (SMALL_CNN, "standard"))


def step_rate(encoder: Encoder, batch: torch.Tensor, steps: int) -> float:
    """Images per second over `steps` training steps (after one untimed step)."""
    opt = torch.optim.SGD(encoder.parameters(), lr=0.01, momentum=0.9)
    encoder.train()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        encoder(batch).square().mean().backward()
        opt.step()
    return steps * len(batch) / (time.perf_counter() - start)


def measure(rounds: int, steps: int, batch_size: int, size: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    batch = torch.randn(batch_size, 3, size, size)
    encoders = {arch: Encoder(stem, arch) for arch, stem in ENCODERS}
    rates: dict[str, list[float]] = {arch: [] for arch in encoders}
    for _ in range(rounds):
        for arch, encoder in encoders.items():
            rates[arch].append(step_rate(encoder, batch, steps))
    return {arch: {"images_per_s": statistics.median(r), "parameters": count_parameters(encoders[arch])}
            for arch, r in rates.items()}


def markdown(result: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    base = result["resnet18"]["images_per_s"]
    lines = ["# Encoder training-step speed (CPU)", "",
             f"Batch {args.batch_size}, {args.size} px, forward + backward + SGD, median of {args.rounds} alternating "
             f"rounds of {args.steps} steps; `python bench/encoder_speed.py`.", "",
             "| encoder | parameters | images/s | × ResNet-18 |", "|---|---:|---:|---:|"]
    for arch, row in result.items():
        lines.append(f"| {arch} | {row['parameters'] / 1e6:.2f} M | {row['images_per_s']:.0f} | "
                     f"{row['images_per_s'] / base:.1f}× |")
    return "\n".join([*lines, "", *machine_lines(), f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS / "encoder_speed.md")
    args = p.parse_args(argv)
    text = markdown(measure(args.rounds, args.steps, args.batch_size, args.size), args)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
