"""Handlers of `fit`, `finetune`, `export`, `status` and `devices` (see engine/cli.py for the flags).

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
from pathlib import Path
from typing import Any

from engine import config as config_mod
from engine.config import RunConfig
from engine.runs import RunDir, effective_state, now_iso, read_json


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # bare words such as elr or cpu
        out[key.strip()] = value
    return out


def _flag_overrides(args: Namespace) -> dict[str, Any]:
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
    o.update(_parse_sets(args.set))
    return o


def _base_config(args: Namespace, overrides: dict[str, Any]) -> RunConfig:
    if args.config is not None:
        return config_mod.load(args.config)
    device = overrides.get("device", "auto")
    cfg = RunConfig()
    if device == "cuda" or (device == "auto" and _cuda_available()):
        cfg = config_mod.gpu_profile(cfg)
    return cfg


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
    """The config a new `fit` run gets from its flags (device profile, --config, flags, --set)."""
    overrides = _flag_overrides(args)
    return config_mod.with_overrides(_base_config(args, overrides), overrides)


def _resolve_config(args: Namespace, run: RunDir) -> RunConfig:
    overrides = _flag_overrides(args)
    if run.config.exists():
        existing = config_mod.load(run.config)
        # A finished or interrupted run continues with its own settings; flags may only repeat them.
        base = existing if args.resume else _base_config(args, overrides)
        wanted = config_mod.with_overrides(base, overrides)
        if not args.resume and not overrides and args.config is None:
            wanted = existing
        diff = _config_diff(existing, wanted)
        if diff:
            raise ValueError(f"{run.path} already holds a run with other settings ({'; '.join(diff[:4])}). "
                             "Use a new --run-dir, or --resume without changing settings.")
        return existing
    if args.resume:
        raise ValueError(f"nothing to resume: {run.path} holds no run (no config.json)")
    return fit_config(args)


# ================================================================================================ fit


def cmd_fit(args: Namespace) -> int:
    from engine.intake import IntakeError

    run = RunDir(args.run_dir)
    try:
        cfg = _resolve_config(args, run)
    except ValueError as e:
        return _fail(str(e))
    source = read_json(run.source, {}) or {}
    if args.resume and source and Path(source.get("data", "")) != Path(args.data).resolve():
        return _fail(f"{run.path} was started on {source['data']}, not {Path(args.data).resolve()}")
    return _run_worker(run, "fit", cfg, lambda progress: _fit(run, cfg, args, progress), quiet=args.quiet,
                       expected=(IntakeError, ValueError))


def _fit(run: RunDir, cfg: RunConfig, args: Namespace, progress) -> dict:
    from engine import pipeline
    from engine.intake import scan
    from engine.metrics import find_truth

    run.path.mkdir(parents=True, exist_ok=True)
    if not run.config.exists():
        config_mod.save(cfg, run.config)
    record = scan(Path(args.data), root=args.root, extract_to=run.path / "source", check="header")
    truth = args.truth or find_truth(Path(record.root))
    pipeline.write_source(run, record, data=args.data, truth=truth, test=args.test)
    ctx = pipeline.open_context(run, cfg, record, truth=truth, test=args.test, progress=progress)
    summary = pipeline.run_fit(ctx)
    if cfg.finetune_after_fit:
        run.write_status(phase="finetune")
        summary = pipeline.run_finetune(ctx)
    return summary


# ================================================================================================ finetune


def cmd_finetune(args: Namespace) -> int:
    from engine.intake import IntakeError

    run = RunDir(args.run_dir)
    if not run.config.exists() or not run.source.exists():
        return _fail(f"{run.path} is not a fitted run (no config.json/source.json); run `python -m engine fit` first")
    try:
        cfg = config_mod.load(run.config)
        overrides = _parse_sets(args.set)
        if args.device is not None:
            overrides["device"] = args.device
        if args.epochs is not None:
            overrides["finetune.epochs"] = args.epochs
        cfg = config_mod.with_overrides(cfg, overrides)
    except ValueError as e:
        return _fail(str(e))
    return _run_worker(run, "finetune", cfg, lambda progress: _finetune(run, cfg, args, progress), quiet=args.quiet,
                       expected=(IntakeError, ValueError))


def _finetune(run: RunDir, cfg: RunConfig, args: Namespace, progress) -> dict:
    from engine import pipeline
    from engine.intake import scan

    source = read_json(run.source, {})
    record = scan(Path(source["root"]) if source["kind"] != "csv" else Path(source["data"]),
                  root=Path(source["root"]) if source["kind"] == "csv" else None, check="header")
    truth = args.truth or (Path(source["truth"]) if source.get("truth") else None)
    test = Path(source["test"]) if source.get("test") else None
    if cfg != config_mod.load(run.config):
        config_mod.save(cfg, run.path / "config_finetune.json")
    ctx = pipeline.open_context(run, cfg, record, truth=truth, test=test, progress=progress)
    return pipeline.run_finetune(ctx)


# ================================================================================================ shared worker


def _run_worker(run: RunDir, phase: str, cfg: RunConfig, body, *, quiet: bool, expected: tuple) -> int:
    """Run one phase as the run's worker: status.json bookkeeping, cancellation, clear failures."""
    from engine.device import GpuOutOfMemory
    from engine.progress import Cancelled, Progress

    progress = Progress(run, show=not quiet)
    progress.install_signal_handlers()
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_status(state="running", phase=phase, pid=os.getpid(), started_at=now_iso(), error=None,
                     message=f"{phase} started")
    try:
        summary = body(progress)
    except Cancelled:
        progress.stage_end("cancelled")
        run.write_status(state="cancelled", message="stopped; continue with --resume")
        print("stopped; the run continues from its last finished epoch with --resume", file=sys.stderr)
        return 130
    except GpuOutOfMemory as e:
        progress.stage_end("failed")
        run.write_status(state="failed", error=str(e), message=str(e))
        return _fail(str(e), 3)
    except expected as e:
        progress.stage_end("failed")
        run.write_status(state="failed", error=str(e), message=str(e))
        return _fail(str(e))
    except Exception as e:
        progress.stage_end("failed")
        traceback.print_exc()
        run.write_status(state="failed", error=f"{type(e).__name__}: {e}", message="failed; see worker.log")
        return 1
    run.write_status(state="done", stage="done", message=f"{phase} finished", eta_s=0)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    s = {k: v for k, v in summary.items() if k != "kind"}
    line = (f"{s['phase']}: {s['images']} images, {s['classes']} classes, {s['flagged']} flagged "
            f"({s['flagged'] / max(s['images'], 1):.1%}), {s['seconds']:.0f} s on {s['device']}")
    print(line)
    if s.get("pseudo_label_accuracy") is not None:
        print(f"  accuracy vs truth: predicted labels {s['pseudo_label_accuracy']:.4f} "
              f"(given labels {s['given_label_accuracy']:.4f})")
        print(f"  flags: precision {s['precision']:.4f}, recall {s['recall']:.4f}, F1 {s['f1']:.4f}, "
              f"AUROC {s['auroc']:.4f}; corrected labels accuracy {s['corrected_accuracy']:.4f}")
    if s.get("test_acc") is not None:
        print(f"  test accuracy {s['test_acc']:.4f}")


# ================================================================================================ export etc.


def cmd_export(args: Namespace) -> int:
    from engine.export import ExportError, export_labels

    try:
        out = export_labels(args.run_dir, args.out, args.format)
    except ExportError as e:
        return _fail(str(e))
    print(f"wrote {out}")
    return 0


def cmd_status(args: Namespace) -> int:
    run = RunDir(args.run_dir)
    status = run.read_status()
    if not status:
        return _fail(f"{run.path} holds no run")
    status["effective_state"] = effective_state(status)
    if args.json:
        print(json.dumps({"status": status, "events": run.read_events()[-10:]}, indent=2))
        return 0
    print(f"{run.path}: {status['effective_state']} ({status.get('phase', '?')}, stage {status.get('stage', '?')} "
          f"{status.get('step', 0)}/{status.get('total', 0)}) {status.get('message', '')}")
    return 0


def cmd_devices(args: Namespace) -> int:
    from engine.device import describe_devices

    info = describe_devices()
    if args.json:
        print(json.dumps(info))
    else:
        names = ", ".join(d["name"] for d in info["devices"]) or "none"
        print(f"CUDA GPUs: {names}; default device: {info['default']}; CPU threads: {info['cpu_threads']}")
    return 0

