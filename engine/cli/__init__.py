"""`python -m engine <command>`: the command line, and the one way the app starts work.

Commands (flags are a contract; add to them, never rename):

    scan DATA [--json] [--root ROOT]                 intake report of a folder, .zip or CSV manifest
    prepare DATA --out DIR [--image-size N] [--workers N]   decode every image once into a uint8 cache
    noise DATA --out OUT --kind K --rate R --seed S [--mapping cifar10|cifar100|FILE]
    fit DATA --run-dir RUN [--loss ...] [--no-pretrain] [--pretrain-epochs N] [--epochs N]
        [--batch-size N] [--image-size N] [--device auto|cpu|cuda] [--seed N] [--resume]
        [--test DIR] [--truth CSV] [--finetune] [--config JSON] [--set KEY=VALUE ...] [--no-memory] [--budget 10m]
        [--weights PATH] [--gpus N]
    finetune RUN [--truth CSV] [--device ...] [--epochs N] [--set KEY=VALUE ...] [--resume]
    export RUN --out PATH --format csv|json|folder [--overwrite] [--auto-relabel confident|never|all] [--top N]
        [--drop-duplicates] [--drop-outliers Q]
    rerank RUN [--quiet]                             re-rank the review queue with the decisions (engine.cli.rerank)
    decisions export RUN --out CSV [--overwrite]     review decisions out (engine.cli.review)
    decisions import RUN CSV [--no-memory]           ... and back in
    status RUN [--json]
    devices [--json]

Handlers live next to the concepts they drive (engine.cli.data, engine.cli.run) and are imported
lazily, so `--help` and `scan` never import torch.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from engine.cli import rerank, review
from engine.errors import UserError, bug_message


def _add_scan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="check a dataset and print its intake report")
    p.add_argument("data", type=Path, help="folder of class folders, a .zip of one, or a CSV with path,label")
    p.add_argument("--root", type=Path, default=None, help="CSV manifests: folder the paths are relative to")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode every image once into a memory-mappable uint8 cache")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True, help="cache folder (images.npy, manifest.csv, intake.json)")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="decoding processes, this one included (0 = every core)")


def _add_noise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noise", help="write a copy of a dataset with simulated label noise")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kind", choices=["symmetric", "asymmetric", "pair"], required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mapping", default=None, help="asymmetric: cifar10, cifar100 or a CSV/JSON file source->target")
    p.add_argument("--root", type=Path, default=None)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="phase (a): pre-train, classify, flag suspected mislabels")
    p.add_argument("data", type=Path)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--root", type=Path, default=None, help="CSV manifests: folder the paths are relative to")
    p.add_argument("--loss", choices=["ce", "nfl+rce", "elr", "mixup-boot"], default=None,
                   help="default: elr (mixup-boot: mixup with dynamic bootstrapping, Arazo et al. 2019)")
    p.add_argument("--no-pretrain", action="store_true", help="skip SimCLR: the paper's from-scratch baseline")
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs after the warm-up")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint, repairing a damaged run file")
    p.add_argument("--test", type=Path, default=None, help="clean labelled folder: adds test accuracy")
    p.add_argument("--truth", type=Path, default=None, help="CSV path,true_label: detection metrics")
    p.add_argument("--finetune", action="store_true", help="also run phase (b) right after")
    p.add_argument("--budget", default=None, metavar="DURATION",
                   help="time phase (a) may take, e.g. 10m: the epochs not set by flags are sized to fill it")
    p.add_argument("--time-limit", default=None, metavar="DURATION",
                   help="without --budget: the most phase (a) may take; the epochs not set by flags are shrunk "
                        "to fit it on this machine. auto (the CPU default: 2.5 min up to 2,000 images, rising to "
                        "10 min at 5,000; from 2,000 images it also grows the pre-training to fill it), none, "
                        "or e.g. 20m")
    p.add_argument("--config", type=Path, default=None, help="a config.json to start from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. pretrain.lr=0.1")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-memory", action="store_true",
                   help="start without the decisions the workspace remembers for these images")
    p.add_argument("--weights", type=Path, default=None,
                   help="start the encoder from a local file: a torchvision ResNet-18/34/50 state dict or a CLeaN "
                        "checkpoint (RUN/checkpoints/*.pt); never downloaded (config model.weights)")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="train with N processes, one per GPU, through torchrun (DistributedDataParallel); the batch "
                        "size stays the global batch. With --device cpu: N CPU processes over gloo (for testing)")


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="phase (b) on a fitted run, using review decisions")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--truth", type=Path, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--epochs", type=int, default=None, help="weighted SupCon epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true",
                   help="also repair a damaged fine-tuning file, redoing the stages that depend on it")
    p.add_argument("--quiet", action="store_true")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the corrected labels")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", choices=["csv", "json", "folder"], default="csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file, or an earlier folder export")
    p.add_argument("--auto-relabel", choices=["confident", "never", "all"], default="confident",
                   help="which flagged images take the suggested label without a review: confident (default: "
                        "only where the evidence clears the measured bar), never, or all")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="a flag budget: only the N most suspicious flagged images stay flagged (answered ones first)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="keep one image of each group of copies whose labels agree; the others are discarded")
    p.add_argument("--drop-outliers", type=float, default=None, metavar="Q",
                   help="discard images whose outlier_score is Q or more (0-1; e.g. 0.99: the most outlying 1 %%)")


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a run's state and last events")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true")


def _add_devices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list the compute devices training can use")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="CLeaN: find and fix mislabeled images.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_scan, _add_prepare, _add_noise, _add_fit, _add_finetune, _add_export, _add_status, _add_devices,
                review.add_parser, rerank.add_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]  # `fit --gpus N` starts the same command N times
    if args.command in ("scan", "prepare", "noise"):
        from engine.cli import data as handlers
    elif args.command == "decisions":
        handlers = review
    elif args.command == "rerank":
        handlers = rerank
    else:
        from engine.cli import run as handlers
    handler = getattr(handlers, "cmd_" + args.command)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as e:
        # A path given on the command line that is a file where a folder is needed (or the reverse), or
        # not writable: the user's to fix, so one sentence instead of a traceback.
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except UserError as e:  # a handler that let one through: still the user's to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a plain ValueError included: not bad input but a bug
        traceback.print_exc()
        print(f"error: {bug_message(e)}", file=sys.stderr)
        return 1
