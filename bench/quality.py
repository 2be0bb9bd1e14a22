#!/usr/bin/env python3
"""Label-error detectors side by side on the same images, noise and seed: CLeaN and its variants, cleanlab
on cross-validated probabilities of a plain small CNN (the baseline a user would run) and of the same
network, and a kNN vote on CLeaN's SimCLR features; and whether the labels each one exports are better
than the given ones.

    python bench/quality.py                     # the standard CPU run (below), est. 45-60 min on 2 cores
    python bench/quality.py --case real         # real human noise + clean data (six cases, see README)
    python bench/quality.py --case real --rows last      # the same on images the defaults were not tuned on
    python bench/quality.py --case all-real     # + Imagenette 1 % / 50 % and CIFAR-10 40 % symmetric
    python bench/quality.py --case cifar10n-worst --n-per-class 10 --pretrain-epochs 1 --epochs 1 --cnn-epochs 1  # quick
    python bench/quality.py --case cifar10 --grid paper
    python bench/quality.py --case cifar10 --n-per-class 500 --noise asymmetric --rate 0.4
    python bench/quality.py --case digits --pretrain-epochs 1 --epochs 1 --folds 2     # a quick look
    python bench/quality.py --case imagenette25,imagenette50 --image-size 64
    python bench/quality.py --case folder --data DIR [--test DIR]         # DIR/truth.csv or DIR/noise.csv
    python bench/quality.py --case clean-folder --data DIR --noise symmetric --rate 0.4   # noise added here
    python bench/quality.py --gpu [--dry-run]   # full CIFAR-10 on a GPU in <= 10 min (bench/gpu_quality.sh)

Default (no flags): CIFAR-10, 5,000 train images (500 per class) with 40 % symmetric noise, clean test
split of 1,000 images, then the 3,000 jittered digits (bench/digits.py) with 40 % symmetric noise and 1,000
clean test digits; every method; the engine's CPU defaults (or its GPU profile on a GPU).

Cases (--case, comma list): cifar10, cifar10n-worst, cifar10n-aggre, cifar10n-random1, cifar10-clean, digits,
sample, imagenette1, imagenette5, imagenette25, imagenette50, folder, clean-folder, and the presets real and
all-real (bench/quality_data.py).

Methods (--methods, comma list): clean, clean-ce, clean-nflrce, clean-mixup, no-pretrain, cleanlab, cleanlab-cnn,
knn (see bench/quality_methods.py; the definitions are also written under every results table). Without
--methods every one runs but clean-mixup.

CLeaN runs leave out the UMAP map (not scored) unless --map. Pre-training is label-free, so it runs once
per image set and every CLeaN run on those images reuses it (--no-share-pretrain: each run pre-trains).

Writes bench/results/quality_<case>.{md,json,png} per case and rebuilds bench/results/quality.{md,png}
from all cases there; --gpu writes bench/results/gpu_quality.{md,json}. Generated data: bench/data/quality/
(git-ignored); run folders: bench/work/quality/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` and `bench` live in the repository root

from bench import quality_baselines as qb  # noqa: E402
from bench import quality_clean as qc  # noqa: E402
from bench import quality_methods as qm  # noqa: E402
from bench import quality_report as report  # noqa: E402
from bench.quality_data import DATA_ROOT, Case, CaseData, make_cases, materialise, parse_grid  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work" / "quality"
GPU_GRID = "symmetric:0.4,symmetric:0.8,asymmetric:0.4"
# Ten minutes on one GPU for three full CIFAR-10 runs: SimCLR once (shared, label-free) + three ELR
# classifiers. The epochs are sized from ~15-20k images/s for the CIFAR ResNet-18 in bf16 on an H100
# (an estimate, not a measurement); the deadline stops whatever is still running and keeps what finished.
GPU_PRESET: dict[str, Any] = {"case": "cifar10", "grid": GPU_GRID, "methods": "clean", "device": "cuda",
                              "n_per_class": 5000, "test_per_class": 1000, "pretrain_epochs": 30, "epochs": 15,
                              "deadline_s": 540.0}
DRY_RUN_PRESET: dict[str, Any] = {"device": "cpu", "n_per_class": 20, "test_per_class": 10, "pretrain_epochs": 1,
                                  "epochs": 1, "image_size": 16, "deadline_s": None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default=None, help="comma list of cases or presets (real, all-real; see above) "
                   "(default: cifar10,digits)")
    p.add_argument("--rows", default="first", choices=["first", "last"], help="CIFAR-10N and cifar10-clean cases: "
                   "the first or the last N images of each class of the labelled rows 0..44,999")
    p.add_argument("--methods", default=None, help=f"comma list of {', '.join(qm.METHODS)} (default: all but clean-mixup)")
    p.add_argument("--noise", default="symmetric", choices=["symmetric", "asymmetric", "pair"])
    p.add_argument("--rate", type=float, default=0.4)
    p.add_argument("--grid", default=None, help="'paper' (symmetric 0.2/0.4/0.6/0.8, asymmetric 0.2/0.4) or a "
                   "list like symmetric:0.2,asymmetric:0.4; replaces --noise/--rate")
    p.add_argument("--mapping", default=None, help="asymmetric noise on non-CIFAR-10 classes: engine noise --mapping")
    p.add_argument("--n-per-class", type=int, default=None,
                   help="train images per class (CIFAR-10 cases 500, digits 300, Imagenette 200)")
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test images per class (CIFAR-10 cases and digits 100, Imagenette 50)")
    p.add_argument("--data", type=Path, default=None, help="folder / clean-folder cases: the class-folder tree")
    p.add_argument("--test", type=Path, default=None, help="folder / clean-folder cases: a clean test folder")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs (engine fit --epochs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="engine config for every run, e.g. pretrain.lr=0.1")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="noise, training and fold seed")
    p.add_argument("--folds", type=int, default=3, help="cleanlab cross-validation folds K")
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--cnn-epochs", type=int, default=20, help="cleanlab-cnn: epochs per fold")
    p.add_argument("--no-finetune", action="store_true", help="CLeaN default without phase (b)")
    p.add_argument("--no-share-pretrain", action="store_true",
                   help="every CLeaN run pre-trains itself (default: once per image set, see quality_methods)")
    p.add_argument("--map", action="store_true", help="CLeaN runs also draw the UMAP map, as the app does "
                   "(default: left out; it is not scored and costs ~40 s per run at 5k images, minutes at 50k)")
    p.add_argument("--results", type=Path, default=None, help=f"default {RESULTS.relative_to(ROOT)}")
    p.add_argument("--work", type=Path, default=WORK, help="run folders (replaced on every invocation)")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="generated data, written once")
    p.add_argument("--shared-data", type=Path, default=None, help="folder of to_folder.py (default ../shared/data)")
    p.add_argument("--deadline-s", type=float, default=None, help="stop starting/running methods after this long")
    p.add_argument("--gpu", action="store_true", help="full CIFAR-10, ELR, symmetric 0.4/0.8 + asymmetric 0.4, "
                   "phase (a) only, <= 10 min on one GPU; writes gpu_quality.md")
    p.add_argument("--dry-run", action="store_true", help="with --gpu: the same path with tiny sizes on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def apply_presets(args: argparse.Namespace) -> argparse.Namespace:
    """--gpu and --dry-run fill in whatever flag was left out; explicit flags win."""
    if args.dry_run and not args.gpu:
        raise ValueError("--dry-run goes with --gpu (it rehearses the GPU preset on the CPU)")
    presets = [GPU_PRESET, DRY_RUN_PRESET] if args.dry_run else [GPU_PRESET] if args.gpu else []
    given = {k for k, v in vars(args).items() if v is not None}
    for preset in presets:
        for key, value in preset.items():
            if key not in given:  # the dry run's values replace the GPU preset's, never the user's
                setattr(args, key, value)
    if args.gpu:
        args.no_finetune = True  # Table 1's numbers are after pre-training, before fine-tuning
        if args.dry_run:
            args.set = [*args.set, "classify.warmup_epochs=1"]
            args.results = args.results or args.work / "results"
    args.case = args.case or "cifar10,digits"
    args.device = args.device or "auto"
    args.results = args.results or RESULTS
    return args


def selected_methods(text: str | None) -> list[str]:
    wanted = [m.strip().replace("clean-nfl+rce", "clean-nflrce") for m in (text or ",".join(qm.DEFAULT_METHODS)).split(",")]
    unknown = [m for m in wanted if m not in qm.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(qm.METHODS)}")
    if "knn" in wanted and "clean" not in wanted:
        raise ValueError("knn votes on the pre-trained encoder of the clean run: add clean to --methods")
    return [m for m in qm.METHODS if m in wanted]  # clean first: the others reuse its pre-training


def run_case(case: Case, data: CaseData, methods: list[str], s: qm.Settings, *, image_size: int | None,
             work: Path, pool: qc.PretrainPool, deadline: qc.Deadline, bar: Any) -> list[qm.Row]:
    rows: list[qm.Row] = []
    work = work / case.name
    for method in methods:
        bar.set_postfix_str(f"{case.name}: {method}")
        left = deadline.left()
        if left is not None and left <= 0:
            rows.append(qm.Row(qm.LABELS[method], method, error="not started: time limit reached"))
        else:
            try:
                rows += run_method(method, case, data, s, image_size=image_size, work=work, pool=pool,
                                   deadline=deadline, say=bar.write)
            except Exception as e:  # one broken method must not cost the hour the others took
                traceback.print_exc()
                rows.append(qm.Row(qm.LABELS[method], method, error=f"{type(e).__name__}: {e}"))
        bar.update(1)
    return rows


def run_method(method: str, case: Case, data: CaseData, s: qm.Settings, *, image_size: int | None, work: Path,
               pool: qc.PretrainPool, deadline: qc.Deadline, say: Any) -> list[qm.Row]:
    if method in qm.FIT_FLAGS:
        return qc.run_clean(method, data, work / method, s, image_size=image_size, images=case.images, pool=pool,
                            deadline=deadline, say=say)
    if method in ("cleanlab", "cleanlab-cnn"):
        cfg = qc.resolved_config(qc.fit_argv(data, work / "clean", s, image_size))
        if method == "cleanlab-cnn":
            from bench.quality_cnn import run_cleanlab_cnn  # imports torch: only when it runs

            return [run_cleanlab_cnn(data, work / "cleanlab-cnn", cfg, s, say=say)]
        return [qb.run_cleanlab(data, work / "cleanlab", cfg, s, say=say)]
    from engine.runs.rundir import RunDir

    own = qc.run_timings(RunDir(work / "clean").read_events())["pretrain"]
    shared = pool.done.get(case.images, (None, 0.0))[1]
    return [qb.run_knn(data, work / "clean", work / "knn", s, pretrain_seconds=own or shared)]


def case_result(case: Case, data: CaseData, rows: list[qm.Row], s: qm.Settings, *, image_size: int | None,
                work: Path, command: str) -> dict[str, Any]:
    from engine.data.intake import scan
    from engine.method.models import resolve_stem
    from engine.train.device import resolve_device

    cfg = qc.resolved_config(qc.fit_argv(data, work / case.name / "clean", s, image_size))
    scored = next((r.metrics for r in rows if r.metrics), {})
    n = int(scored.get("n") or len(scan(data.train, check="header").samples))
    device = resolve_device(cfg.device).type
    fold_e = qm.fold_epochs(cfg, s.folds)
    return {
        "case": {"name": case.name, "title": case.title, "kind": case.kind, "noise": case.noise, "rate": case.rate,
                 "n_per_class": case.n_per_class, "test_per_class": case.test_per_class},
        "n": n, "n_mislabeled": int(scored.get("n_mislabeled") or 0),
        "n_test": len(scan(data.test, check="header").samples) if data.test else None,
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "machine": report.machine(), "command": command,
        "settings": {"image_size": cfg.data.image_size, "device": device,
                     "stem": resolve_stem(cfg.model.stem, cfg.data.image_size, device), "arch": cfg.model.arch,
                     "seed": s.seed,
                     "pretrain_epochs": cfg.pretrain.epochs,
                     "warmup_epochs": cfg.classify.warmup_epochs, "classify_epochs": cfg.classify.epochs,
                     "finetune_epochs": cfg.finetune.epochs if s.finetune else 0, "batch_size": cfg.classify.batch_size,
                     "folds": s.folds, "knn_k": s.knn_k, "cnn_epochs": s.cnn_epochs, "sets": list(s.sets), "share_pretrain": s.share_pretrain,
                     "skip_map": s.skip_map},
        "budget": {"image_passes": qm.training_budget(cfg, n), "fold_epochs": fold_e,
                   "cleanlab_passes": fold_e * (s.folds - 1) * n,  # each image trains in K-1 folds
                   "cnn_passes": s.cnn_epochs * (s.folds - 1) * n},
        "rows": [asdict(r) for r in rows],
        "target": report.target_check([asdict(r) for r in rows]),
        "never_worse": report.never_worse([asdict(r) for r in rows]),
        "data": {"train": str(data.train), "truth": str(data.truth), "test": str(data.test) if data.test else None},
        "trained": trained_epochs(work / case.name / "clean"),
    }


def trained_epochs(run: Path) -> dict[str, Any] | None:
    """The epochs the CLeaN default run really trained (config.json: after the time limit or a budget), which
    can be fewer than the profile's in `settings`."""
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None
    if not saved:
        return None
    return {"pretrain_epochs": saved["pretrain"]["epochs"], "classify_epochs": saved["classify"]["epochs"],
            "time_limit_s": saved.get("time_limit_s"), "budget_s": saved.get("budget_s")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = apply_presets(build_parser().parse_args(argv))
        methods = selected_methods(args.methods)
        grid = parse_grid(args.grid, args.noise, args.rate)
        cases = make_cases(args.case.split(","), grid, n_per_class=args.n_per_class,
                           test_per_class=args.test_per_class, data=args.data, test=args.test, mapping=args.mapping,
                           rows=args.rows)
        if args.folds < 2 or args.knn_k < 1 or args.cnn_epochs < 1:
            raise ValueError(f"--folds must be >= 2, --knn-k and --cnn-epochs >= 1, got {args.folds}, {args.knn_k} "
                             f"and {args.cnn_epochs}")
        if args.device == "cuda" and not _cuda_available():
            raise ValueError("--device cuda (or --gpu) needs a CUDA GPU and none is visible; "
                             "rehearse with --gpu --dry-run")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    started = time.monotonic()
    command = "python bench/quality.py" + (" " + shlex.join(argv) if argv else "")
    s = qm.Settings(seed=args.seed, device=args.device, pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                    batch_size=args.batch_size, sets=tuple(args.set), folds=args.folds, knn_k=args.knn_k,
                    cnn_epochs=args.cnn_epochs, finetune=not args.no_finetune, share_pretrain=not args.no_share_pretrain,
                    skip_map=not args.map, quiet=args.quiet)
    deadline = qc.Deadline(None if args.deadline_s is None else time.monotonic() + args.deadline_s)
    pool = qc.PretrainPool()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(cases) * len(methods), desc="quality", unit="method", file=sys.stderr, disable=args.quiet,
               position=0)
    try:
        for case in cases:
            image_size = args.image_size  # None: the run's own (auto: from the images and the device)
            try:
                data = materialise(case, root=args.data_root, seed=args.seed, shared=args.shared_data)
            except ValueError as e:
                print(f"error: {case.name}: {e}", file=sys.stderr)
                return 2
            bar.write(f"== {case.name}: {case.title}")
            rows = run_case(case, data, methods, s, image_size=image_size, work=args.work, pool=pool,
                            deadline=deadline, bar=bar)
            result = case_result(case, data, rows, s, image_size=image_size, work=args.work, command=command)
            results.append(result)
            written = report.write_case(args.results, result)
            if args.gpu:
                written += write_gpu(args.results, results, command=command, dry_run=args.dry_run,
                                     elapsed_s=time.monotonic() - started)
            bar.write(f"   wrote {', '.join(str(p) for p in written[:2])}")
    except KeyboardInterrupt:
        print("interrupted: the cases finished so far are written", file=sys.stderr)
        return 130
    finally:
        bar.close()
    for r in results:
        print(f"\n{r['case']['name']}: {r['case']['title']}")
        for line in [*report.table(r["rows"]), "", *report.check_lines(r)]:
            print(line)
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def write_gpu(results_dir: Path, results: list[dict[str, Any]], *, command: str, dry_run: bool,
              elapsed_s: float) -> list[Path]:
    import json

    from engine.runs.atomic import atomic_write_text

    md, js = results_dir / "gpu_quality.md", results_dir / "gpu_quality.json"
    atomic_write_text(md, report.gpu_markdown(results, command=command, dry_run=dry_run, elapsed_s=elapsed_s))
    atomic_write_text(js, json.dumps(results, indent=2) + "\n")
    return [md, js]


if __name__ == "__main__":
    sys.exit(main())
