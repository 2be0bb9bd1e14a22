"""Handlers of `fit`, `finetune`, `export`, `status` and `devices` (see engine/cli/__init__.py for the flags).

Exit codes: 0 done, 1 unexpected error (traceback in the log), 2 bad input or settings (one clear
sentence on stderr), 3 GPU out of memory, 130 stopped by request (resumable with --resume).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import traceback
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import config as config_mod
from engine.config import RunConfig
from engine.errors import UserError, bug_message
from engine.runs import worker_lock
from engine.runs.atomic import now_iso, read_json
from engine.runs.rundir import RunDir
from engine.runs.status import CANCELLED, DONE, FAILED, RUNNING, effective_state
from engine.runs.worker_lock import WorkerLock

if TYPE_CHECKING:
    from engine.runs.progress import Progress


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        if raw.strip().lower() in ("true", "false"):  # JSON spelling, as in config.json
            value: Any = raw.strip().lower() == "true"
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw  # bare words such as elr or cpu
        out[key.strip()] = value
    return out


def fit_overrides(args: Namespace) -> dict[str, Any]:
    """The config keys the fit flags set explicitly (flags left out change nothing)."""
    o: dict[str, Any] = {}
    if args.loss is not None:
        o["classify.loss"] = args.loss
    if args.no_pretrain:
        o["pretrain.enabled"] = False
    if args.pretrain_epochs is not None:
        o["pretrain.epochs"] = args.pretrain_epochs
    if args.epochs is not None:
        o["classify.epochs"] = args.epochs
    if args.batch_size is not None:
        o["classify.batch_size"] = args.batch_size
        o["pretrain.batch_size"] = args.batch_size
        o["finetune.batch_size"] = args.batch_size
    if args.image_size is not None:
        o["data.image_size"] = args.image_size
    if args.device is not None:
        o["device"] = args.device
    if args.seed is not None:
        o["seed"] = args.seed
    if args.finetune:
        o["finetune_after_fit"] = True
    if args.no_memory:
        o["review.memory"] = False  # recorded in config.json: the app and later commands respect the opt-out
    o.update(_parse_sets(args.set))
    return o


def _base_config(args: Namespace, overrides: dict[str, Any]) -> RunConfig:
    if args.config is not None:
        return config_mod.load(args.config)
    device = overrides.get("device", "auto")
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    return config_mod.profile_for(device)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    da, db = _flatten(config_mod.to_dict(a)), _flatten(config_mod.to_dict(b))
    return [f"{k} {da.get(k)!r} -> {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def fit_config(args: Namespace) -> RunConfig:
    """The config a new `fit` run gets from its flags (device profile, --config, flags, --set), with the
    network stem resolved: "auto" depends on the device, and a run must rebuild the same network on
    any machine that resumes or fine-tunes it."""
    overrides = fit_overrides(args)
    return _concrete(config_mod.with_overrides(_base_config(args, overrides), overrides))


def _concrete(cfg: RunConfig) -> RunConfig:
    from engine.method.models import resolve_stem
    from engine.train.device import resolve_device

    stem = resolve_stem(cfg.model.stem, cfg.data.image_size, resolve_device(cfg.device).type)
    return replace(cfg, model=replace(cfg.model, stem=stem))


# Settings that choose what a command does, not what the run is: they may differ between invocations.
_INVOCATION_KEYS = ("finetune_after_fit",)


def _resolve_config(args: Namespace, run: RunDir) -> RunConfig:
    overrides = fit_overrides(args)
    if run.config.exists():
        existing = config_mod.load(run.config)
        # A finished or interrupted run continues with its own settings; flags may only repeat them
        # (flags left out keep the run's values, so `fit DATA --run-dir RUN --finetune` works on any run).
        wanted = fit_config(args) if args.config is not None else config_mod.with_overrides(existing, overrides)
        diff = [d for d in _config_diff(existing, wanted) if d.split(" ")[0] not in _INVOCATION_KEYS]
        if diff:
            raise UserError(f"{run.path} already holds a run with other settings ({'; '.join(diff[:4])}). "
                            "Use a new --run-dir, or --resume without changing settings.")
        return replace(existing, finetune_after_fit=wanted.finetune_after_fit)
    if args.resume:
        raise UserError(f"nothing to resume: {run.path} holds no run (no config.json)")
    return fit_config(args)


# ================================================================================================ fit


def cmd_fit(args: Namespace) -> int:
    run = RunDir(args.run_dir)
    launched = _launched_worker(run)
    try:
        cfg = _resolve_config(args, run)
        source = read_json(run.source, {}) or {}
        if source and Path(source.get("data", "")) != Path(args.data).resolve():
            raise UserError(f"{run.path} holds a run on {source['data']}, not {Path(args.data).resolve()}; "
                            "use a new --run-dir for other data")
        overlap = _run_data_overlap(run.path, args)
        if overlap:
            raise UserError(overlap)
    except UserError as e:  # ConfigError too: a setting no stage can run with
        return _refused(run, launched, str(e))
    return _run_worker(run, "fit", lambda progress: _fit(run, cfg, args, source, progress), quiet=args.quiet,
                       lock=launched)


def _launched_worker(run: RunDir) -> WorkerLock | None:
    """The first act of a worker the app launched: it holds the run's lock already, and says "running"."""
    lock = worker_lock.inherited(run)
    if lock is not None:
        run.write_status(state=RUNNING, pid=os.getpid(), message="starting", error=None)
    return lock


def _refused(run: RunDir, launched: WorkerLock | None, message: str) -> int:
    """Bad input found before the work starts. Typed in a shell, the command changes nothing; a worker the
    app launched records why its run stopped (the app shows it)."""
    if launched is not None:
        with launched:
            run.write_status(state=FAILED, error=message, message=message)
    return _fail(message)


def _run_data_overlap(run_path: Path, args: Namespace) -> str | None:
    """Why RUN and DATA may not share a folder: a run inside the data would be scanned as images (and
    its temp-file clean-up would touch the user's files); data inside a run folder is the run's to delete."""
    data = Path(args.data).resolve()
    # A CSV manifest or a zip names its images; only a class-folder tree is walked, so only it must not
    # contain the run. Data inside the run folder is refused in every case.
    run = run_path.resolve()
    if data.is_dir() and (run == data or data in run.parents):
        return f"--run-dir {run_path} is inside the data folder {data}; put runs outside the images"
    if run == data or run in data.parents:
        return f"the data {data} is inside the run folder {run_path}; use another --run-dir"
    return None


def _fit(run: RunDir, cfg: RunConfig, args: Namespace, source: dict, progress: Progress) -> dict:
    from engine.data.intake import scan
    from engine.review.metrics import find_truth
    from engine.train import pipeline

    run.path.mkdir(parents=True, exist_ok=True)
    record = scan(Path(args.data), root=args.root, extract_to=run.source_dir, check="header")
    # Written once the data is known to be usable, so that a refused first attempt leaves no settings behind.
    if not run.config.exists():
        config_mod.save(replace(cfg, finetune_after_fit=False), run.config)
    # A resumed run keeps the truth and test files it was started with (the app resumes without them).
    kept_truth, kept_test = _path(source.get("truth")), _path(source.get("test"))
    truth = args.truth or kept_truth
    auto_truth = truth is None
    truth = truth or find_truth(Path(record.root))
    test = args.test or kept_test
    pipeline.truth_changed(run, truth, kept_truth)
    # New truth/test files join source.json only after they loaded: a rejected one must not stick to the run.
    pipeline.write_source(run, record, data=args.data, truth=kept_truth, test=kept_test)
    ctx = pipeline.open_context(run, cfg, record, truth=truth, test=test, progress=progress,
                                truth_optional=auto_truth)
    pipeline.write_source(run, record, data=args.data, truth=truth if ctx.truth is not None else None, test=test)
    summary = pipeline.run_fit(ctx)
    if cfg.finetune_after_fit:
        run.write_status(phase="finetune")
        summary = pipeline.run_finetune(ctx)
    return summary


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


# ================================================================================================ finetune


def cmd_finetune(args: Namespace) -> int:
    run = RunDir(args.run_dir)
    launched = _launched_worker(run)
    if not run.config.exists() or not run.source.exists():
        return _refused(run, launched, f"{run.path} is not a fitted run (no {run.config.name}/{run.source.name}); "
                                       "run `python -m engine fit` first")
    try:
        cfg = config_mod.load(run.config)
        overrides = _parse_sets(args.set)
        if args.device is not None:
            overrides["device"] = args.device
        if args.epochs is not None:
            overrides["finetune.epochs"] = args.epochs
        cfg = config_mod.with_overrides(cfg, overrides)
        if cfg.model != config_mod.load(run.config).model:
            raise UserError("the network of a fitted run cannot change in fine-tuning (model.* settings)")
        from engine.train.device import resolve_device

        resolve_device(cfg.device)  # refuses cuda on a machine without one, before the run is touched
    except UserError as e:
        return _refused(run, launched, str(e))
    return _run_worker(run, "finetune", lambda progress: _finetune(run, cfg, args, progress), quiet=args.quiet,
                       lock=launched)


def _finetune(run: RunDir, cfg: RunConfig, args: Namespace, progress: Progress) -> dict:
    from engine.data.intake import scan
    from engine.runs.stages import FINETUNE
    from engine.train import pipeline

    source = read_json(run.source, {})
    record = scan(Path(source["root"]) if source["kind"] != "csv" else Path(source["data"]),
                  root=Path(source["root"]) if source["kind"] == "csv" else None, check="header")
    truth = args.truth or _path(source.get("truth"))
    if cfg != config_mod.load(run.config):
        config_mod.save(cfg, run.config_finetune)
    ctx = pipeline.open_context(run, cfg, record, truth=truth, test=_path(source.get("test")), progress=progress,
                                phase=FINETUNE)
    return pipeline.run_finetune(ctx)


# ================================================================================================ shared worker


def _run_worker(run: RunDir, phase: str, body: Callable[[Progress], dict], *, quiet: bool,
                lock: WorkerLock | None = None) -> int:
    """Run one phase as the run's worker: one worker per run (its lock, held to the end), status.json
    bookkeeping, cancellation, and failures reported as one sentence (bad input) or with a traceback (a bug).

    lock: the run's lock when the launcher passed it on; a worker started from a shell takes it here.
    """
    import torch

    from engine.runs.progress import Cancelled, Progress
    from engine.train.device import GpuOutOfMemory

    lock = lock or worker_lock.acquire(run, wait_s=2.0)  # a reader probing the lock holds it for microseconds
    if lock is None:
        other = run.read_status().get("pid")
        return _fail(f"another worker{f' (pid {other})' if other else ''} is already running on {run.path}")
    with lock:  # released after the last status write: a reader never sees "running" without a worker
        _remove_stale_temp_files(run)
        progress = Progress(run, show=not quiet)
        progress.install_signal_handlers()
        run.write_status(state=RUNNING, phase=phase, pid=os.getpid(), started_at=now_iso(), error=None,
                         message=f"{phase} started")
        try:
            summary = body(progress)
        except (Cancelled, KeyboardInterrupt):
            return _end(run, progress, CANCELLED, "stopped; continue with --resume", 130)
        except torch.cuda.OutOfMemoryError as e:  # outside the training steps' own guard
            return _end(run, progress, FAILED, str(GpuOutOfMemory(f"GPU out of memory ({e}); try a smaller "
                                                                  "--batch-size or --image-size")), 3)
        except GpuOutOfMemory as e:
            return _end(run, progress, FAILED, str(e), 3)
        except UserError as e:
            return _end(run, progress, FAILED, str(e), 2)
        except Exception as e:  # a bug, not bad input (a plain ValueError included)
            traceback.print_exc()
            return _end(run, progress, FAILED, bug_message(e, where=f"in {run.log.name} or on stderr"), 1)
        run.write_status(state=DONE, stage="done", message=f"{phase} finished", eta_s=0, run_eta_s=0)
    _print_summary(summary)
    return 0


def _end(run: RunDir, progress: Progress, state: str, message: str, code: int) -> int:
    progress.stage_end(state)
    run.write_status(state=state, error=None if state == CANCELLED else message, message=message,
                     eta_s=None, run_eta_s=None)
    if state == CANCELLED:
        print("stopped; the run continues from its last finished epoch with --resume", file=sys.stderr)
        return code
    return _fail(message, code)


def _remove_stale_temp_files(run: RunDir) -> None:
    """Temp files of atomic writes a kill -9 interrupted (possibly a cache-sized .npy)."""
    for folder in (run.path, run.data, run.checkpoints):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _num(v: float | None) -> str:
    """A metric, or "n/a" where it is undefined (AUROC when no image, or every image, is mislabeled)."""
    return "n/a" if v is None or v != v else f"{v:.4f}"


def _print_summary(summary: dict) -> None:
    s = {k: v for k, v in summary.items() if k != "kind"}
    line = (f"{s['phase']}: {s['images']} images, {s['classes']} classes, {s['flagged']} flagged "
            f"({s['flagged'] / max(s['images'], 1):.1%}), {s['seconds']:.0f} s on {s['device']}")
    print(line)
    if s.get("pseudo_label_accuracy") is not None:
        print(f"  accuracy vs truth: predicted labels {_num(s['pseudo_label_accuracy'])} "
              f"(given labels {_num(s['given_label_accuracy'])})")
        print(f"  flags: precision {_num(s['precision'])}, recall {_num(s['recall'])}, F1 {_num(s['f1'])}, "
              f"AUROC {_num(s['auroc'])}; corrected labels accuracy {_num(s['corrected_accuracy'])}")
    if s.get("test_acc") is not None:
        print(f"  test accuracy {s['test_acc']:.4f}")


# ================================================================================================ export etc.


def cmd_export(args: Namespace) -> int:
    from engine.review.export import ExportError, export_labels

    try:
        out = export_labels(args.run_dir, args.out, args.format, overwrite=args.overwrite, top=args.top)
    except (ExportError, UserError) as e:
        return _fail(str(e))
    print(f"wrote {out}")
    return 0


def cmd_status(args: Namespace) -> int:
    run = RunDir(args.run_dir)
    status = run.read_status()
    if not status:
        return _fail(f"{run.path} holds no run")
    status["effective_state"] = effective_state(run, status)
    if args.json:
        print(json.dumps({"status": status, "events": run.read_events()[-10:]}, indent=2))
        return 0
    print(f"{run.path}: {status['effective_state']} ({status.get('phase', '?')}, stage {status.get('stage', '?')} "
          f"{status.get('step', 0)}/{status.get('total', 0)}) {status.get('message', '')}")
    return 0


def cmd_devices(args: Namespace) -> int:
    from engine.train.device import describe_devices

    info = describe_devices()
    if args.json:
        print(json.dumps(info))
    else:
        names = ", ".join(d["name"] for d in info["devices"]) or "none"
        print(f"CUDA GPUs: {names}; default device: {info['default']}; CPU threads: {info['cpu_threads']}")
    return 0

