#!/usr/bin/env python3
"""Does starting from weights you already have pay? `fit --weights` against a start from nothing.

    python bench/weights_transfer.py                                  # Imagenette 25 %, 2,000 photos, 5 min each
    python bench/weights_transfer.py --case imagenette5 --budget 5m
    python bench/weights_transfer.py --source-run RUN                  # reuse a finished source run
    python bench/weights_transfer.py --source-run RUN --arms scratch --image-size 64 --out bench/results/image_size_64

1. Source weights: one CLeaN run on other images, `fit` on 5,000 CIFAR-10 train images (clean labels,
   bench/data/cifar10-5k) with `--source-budget` (default 10m); its SimCLR checkpoint
   RUN/checkpoints/pretrain.pt is the file a person would pass to `--weights`. Its time is not charged
   to the target runs: these are weights a person already has.
2. On the target (Imagenette photos under fastai's noisy labels, bench/quality_data.py), at the same
   `--budget` for every arm (engine.train.budget sizes the epochs to it on this machine):
   - `scratch`:       the default run, SimCLR from random weights;
   - `weights`:       `--weights pretrain.pt`, SimCLR continued from them for the budgeted epochs;
   - `weights-no-ssl`: `--weights pretrain.pt --pretrain-epochs 0`, the budget goes to the classifier.
   Scored against the truth file (F1, AUROC, predicted-label accuracy, export accuracy) and on the clean
   validation photos (test accuracy).

Writes bench/results/weights_transfer_<case>.md and .json. Run folders: bench/work/weights_transfer/
(git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import DATA, RESULTS, ensure_cifar10, machine_lines  # noqa: E402
from bench.quality_data import Case, materialise  # noqa: E402

WORK = ROOT / "bench" / "work" / "weights_transfer"
ARMS: dict[str, list[str]] = {
    "scratch": [],
    "weights": ["--weights", "{weights}"],
    "weights-no-ssl": ["--weights", "{weights}", "--pretrain-epochs", "0"],
}
SCORES = ("f1", "auroc", "pseudo_label_accuracy", "corrected_accuracy", "given_label_accuracy", "test_acc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--case", default="imagenette25", help="an Imagenette case of bench/quality_data.py")
    p.add_argument("--n-per-class", type=int, default=200, help="target photos per class (default 200)")
    p.add_argument("--test-per-class", type=int, default=50, help="clean validation photos per class")
    p.add_argument("--budget", default="5m", help="`fit --budget` of every target arm (default 5m)")
    p.add_argument("--source-budget", default="10m", help="`fit --budget` of the CIFAR-10 source run")
    p.add_argument("--source-run", type=Path, help="a finished run whose checkpoints/pretrain.pt is the source")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--image-size", type=int, help="`fit --image-size` of every target arm (default: the engine's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results stem (default bench/results/weights_transfer_<case>)")
    return p


def fit(argv: list[str]) -> tuple[dict[str, Any], float]:
    """`python -m engine fit argv` in its own process; the run's summary event and its wall time."""
    run = Path(argv[argv.index("--run-dir") + 1])
    shutil.rmtree(run, ignore_errors=True)  # a finished run would be skipped stage by stage
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "fit", *argv, "--quiet"], cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    summary = [e for e in events if e.get("kind") == "summary"][-1]
    config = json.loads((run / "config.json").read_text())
    summary["pretrain_epochs"] = config["pretrain"]["epochs"]
    summary["classify_epochs"] = config["classify"]["epochs"]
    return summary, seconds


def source_weights(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The source run's SimCLR checkpoint, training the run first unless --source-run names one."""
    if args.source_run is not None:
        ckpt = args.source_run / "checkpoints" / "pretrain.pt"
        if not ckpt.is_file():
            raise SystemExit(f"{ckpt} not found: --source-run must be a finished run with SimCLR pre-training")
        return ckpt, {"command": f"(given) {args.source_run}"}
    images = ensure_cifar10(DATA / "cifar10-5k", per_class=500)
    run = WORK / "source-cifar10-5k"
    argv = [str(images), "--run-dir", str(run), "--budget", args.source_budget, "--seed", str(args.seed),
            "--set", "embed.enabled=false"]
    print(f"source: python -m engine fit {shlex.join(argv)}", flush=True)
    summary, seconds = fit(argv)
    return run / "checkpoints" / "pretrain.pt", {"command": "python -m engine fit " + shlex.join(argv),
                                                   "seconds": round(seconds), **summary}


def target_arm(arm: str, data: Any, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    size = f"-{args.image_size}px" if args.image_size else ""
    run = WORK / f"{args.case}-{args.n_per_class}pc{size}-{arm}"
    extra = [a.format(weights=weights) for a in ARMS[arm]]
    if args.image_size:
        extra += ["--image-size", str(args.image_size)]
    argv = [str(data.train), "--run-dir", str(run), "--truth", str(data.truth), "--test", str(data.test),
            "--budget", args.budget, "--seed", str(args.seed), "--set", "embed.enabled=false", *extra]
    print(f"{arm}: python -m engine fit {shlex.join(argv)}", flush=True)
    summary, seconds = fit(argv)
    return {"arm": arm, "seconds": round(seconds), **{k: summary.get(k) for k in SCORES},
            "pretrain_epochs": summary["pretrain_epochs"], "classify_epochs": summary["classify_epochs"],
            "flagged": summary.get("flagged"), "command": "python -m engine fit " + shlex.join(argv)}


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def report(rows: list[dict[str, Any]], source: dict[str, Any], args: argparse.Namespace, title: str) -> str:
    lines = [f"# Start from weights you already have: {title}", "",
             *machine_lines(),
             f"- command: `python bench/weights_transfer.py {shlex.join(sys.argv[1:])}`",
             f"- source weights: `{source['command']}`"
             + (f" ({source['seconds']} s; {source.get('pretrain_epochs')} SimCLR epochs)" if "seconds" in source else ""),
             f"- every target arm: `fit --budget {args.budget}` on the same photos, labels and seed; the budget sizes "
             "the epochs from the speed measured when the arm starts", "",
             "| arm | SimCLR epochs | classifier epochs | wall s | F1 | AUROC | predicted label right | "
             "export right (given) | test acc |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['pretrain_epochs']} | {r['classify_epochs']} | {r['seconds']} | "
                     f"{_fmt(r['f1'])} | {_fmt(r['auroc'])} | {_fmt(r['pseudo_label_accuracy'])} | "
                     f"{_fmt(r['corrected_accuracy'])} ({_fmt(r['given_label_accuracy'])}) | {_fmt(r['test_acc'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not args.case.startswith("imagenette"):
        raise SystemExit(f"unknown arm(s) {unknown}" if unknown else f"--case must be an Imagenette case, got {args.case}")
    case = Case(kind=args.case, n_per_class=args.n_per_class, test_per_class=args.test_per_class)
    data = materialise(case, root=DATA / "quality", seed=args.seed, shared=None)
    WORK.mkdir(parents=True, exist_ok=True)
    weights, source = source_weights(args)
    rows = [target_arm(arm, data, weights, args) for arm in arms]
    out = args.out or RESULTS / f"weights_transfer_{case.name}"
    text = report(rows, source, args, case.title)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"source": source, "rows": rows}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
