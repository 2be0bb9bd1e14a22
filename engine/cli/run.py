"""Handlers of `fit`, `finetune`, `export`, `status` and `devices` (see engine/cli/__init__.py for the flags).

Exit codes: 0 done, 1 unexpected error (traceback in the log), 2 bad input or settings (one clear
sentence on stderr), 3 GPU out of memory, 130 stopped by request (resumable with --resume).

Before a command works on a run folder it checks that the folder is CLeaN's (engine.runs.owner: a
folder of the user's own is refused with nothing in it changed) and that no run file is damaged
(engine.runs.integrity: a damaged file is named with the command that repairs it; `--resume` carries
out that repair, redoing the stage that wrote the file and the stages that depend on it).

`fit` and `finetune` also run as several processes under torchrun (`fit --gpus N` starts them): rank 0 is
the run's worker and does everything above; the others take part in its training stages and write
nothing (engine.train.distributed).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import traceback
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import config as config_mod
from engine.config import ConfigError, RunConfig
from engine.errors import UserError, bug_message
from engine.filekind import require_regular_file
from engine.review.decisions import finetune_waits
from engine.review.estimate import ROUGH_COUNT, count_is_rough
from engine.runs import integrity, owner, worker_lock
from engine.runs.atomic import DamagedFile, now_iso, read_json
from engine.runs.rundir import RunDir
from engine.runs.stages import FINETUNE, FIT
from engine.runs.status import CANCELLED, DONE, FAILED, RUNNING, effective_state
from engine.runs.worker_lock import WorkerLock

if TYPE_CHECKING:
    from engine.data.intake import DatasetRecord
    from engine.data.working_size import WorkingSize
    from engine.runs.progress import Progress
    from engine.train.distributed import Dist


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
    if getattr(args, "budget", None) is not None:
        o["budget_s"] = config_mod.parse_budget(args.budget)
    if getattr(args, "time_limit", None) is not None:
        o["time_limit_s"] = config_mod.parse_time_limit(args.time_limit)
    if args.no_memory:
        o["review.memory"] = False  # recorded in config.json: the app and later commands respect the opt-out
    if getattr(args, "weights", None) is not None:
        o["model.weights"] = str(args.weights)
    o.update(_parse_sets(args.set))
    if isinstance(o.get("model.weights"), str) and o["model.weights"]:
        # one spelling of the file in config.json, however it was named: a rerun with a relative path matches
        o["model.weights"] = str(Path(o["model.weights"]).expanduser().resolve())
    return o


# A run with a budget keeps the epochs it planned (config.json), so a later invocation that asks for the
# same budget is the same run, whatever the flags' profile epochs say.
_PLANNED_KEYS = config_mod.BUDGET_SIZED


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
    network stem resolved: "auto" depends on the device (or follows `model.weights`), and a run must
    rebuild the same network on any machine that resumes or fine-tunes it."""
    overrides = fit_overrides(args)
    return _concrete(config_mod.with_overrides(_base_config(args, overrides), overrides))


def _concrete(cfg: RunConfig) -> RunConfig:
    from engine.train import weights

    cfg = weights.resolve(cfg)  # the weights file pinned (path, sha256) and its stem, or refused
    if cfg.data.image_size == config_mod.AUTO_SIZE:
        return cfg  # the stem depends on the size, which the images decide (_sized, once they are scanned)
    return _with_size(cfg, cfg.data.image_size)


def _with_size(cfg: RunConfig, size: int) -> RunConfig:
    """`cfg` at working size `size`, its stem resolved for it if still "auto"."""
    from engine.method.models import resolve_stem
    from engine.train.device import resolve_device

    cfg = replace(cfg, data=replace(cfg.data, image_size=size))
    stem = resolve_stem(cfg.model.stem, size, resolve_device(cfg.device).type)
    return replace(cfg, model=replace(cfg.model, stem=stem))


def working_size_of(cfg: RunConfig, record: DatasetRecord) -> tuple[RunConfig, WorkingSize | None]:
    """`cfg` with an auto working size resolved from `record`'s images and the device
    (engine.data.working_size), and the choice; (cfg, None) when the size was given."""
    from engine.data import working_size
    from engine.train.device import resolve_device

    if cfg.data.image_size != config_mod.AUTO_SIZE:
        return cfg, None
    chosen = working_size.resolve(Path(record.root), [s.path for s in record.samples],
                                  resolve_device(cfg.device).type)
    return _with_size(cfg, chosen.size), chosen


def _sized(cfg: RunConfig, record: DatasetRecord, progress: Progress, run: RunDir) -> RunConfig:
    """A new run's working size; when it was auto, the reason is a `size` event (the Train page shows it)."""
    cfg, chosen = working_size_of(cfg, record)
    if chosen is not None:
        reason = chosen.reason()
        progress.note(reason)
        run.append_event(kind="size", message=reason, size=chosen.size, native=chosen.native)
    return cfg


# Settings that choose what a command does, not what the run is: they may differ between invocations.
_INVOCATION_KEYS = ("finetune_after_fit", "data.prepare_workers", "data.memory_budget_gb")


def _resolve_config(args: Namespace, run: RunDir, repair: integrity.Plan | None = None) -> RunConfig:
    overrides = fit_overrides(args)
    restoring = repair is not None and any(d.path == run.config for d in repair.damage)
    existing = _restored_config(run) if restoring else config_mod.load(run.config) if run.config.exists() else None
    if existing is not None:
        # A finished or interrupted run continues with its own settings; flags may only repeat them
        # (flags left out keep the run's values, so `fit DATA --run-dir RUN --finetune` works on any run).
        wanted = fit_config(args) if args.config is not None else config_mod.with_overrides(existing, overrides)
        if wanted.data.image_size == config_mod.AUTO_SIZE:  # auto asks for what the run chose from its images
            wanted = _with_size(wanted, existing.data.image_size)
        ignored = _INVOCATION_KEYS + (_PLANNED_KEYS if existing.budget_s else ())
        diff = [d for d in _config_diff(existing, wanted) if d.split(" ")[0] not in ignored]
        if diff:
            raise UserError(f"{run.path} already holds a run with other settings ({'; '.join(diff[:4])}). "
                            "Use a new --run-dir, or --resume without changing settings.")
        return replace(existing, finetune_after_fit=wanted.finetune_after_fit)
    if args.resume and not restoring:
        raise UserError(f"nothing to resume: {run.path} holds no run (no config.json)")
    return fit_config(args)  # a new run, or a damaged config.json no checkpoint can restore: the flags


def _restored_config(run: RunDir) -> RunConfig | None:
    """The settings of a run whose config.json is damaged, from the checkpoint of a finished phase (a)
    stage (each saves the config it ran with); None when no checkpoint holds a valid one."""
    from engine.train.checkpoint import saved_config

    saved = saved_config([run.checkpoint(name) for name in ("train", "warmup", "pretrain")])
    if saved is None:
        return None
    try:
        return replace(config_mod.validate(config_mod.from_dict(saved)), finetune_after_fit=False)
    except ConfigError:
        return None


def _damage(run: RunDir, *, resume: bool, phase: str) -> integrity.Plan | None:
    """The repair of a damaged run, checked before a phase starts (checkpoints loaded as torch will).

    Returns None for a healthy run, the plan to carry out with --resume; raises UserError with the one
    sentence that names the file and the repair otherwise (or when `phase` cannot repair it).
    """
    from engine.train.checkpoint import checkpoint_problem

    found = integrity.find_damage(run, checkpoint_problem=checkpoint_problem, verify=True)
    if not found:
        return None
    cfg = _config_or_none(run)
    plan = integrity.plan(run, found, cfg)
    if not resume or (phase == FINETUNE and plan.fit_needed):
        raise integrity.DamagedRun(integrity.sentence(run, plan, cfg), plan.phase)
    return plan


def _config_or_none(run: RunDir) -> RunConfig | None:
    try:
        return config_mod.load(run.config)
    except UserError:
        return None


def _require_inputs(truth: Path | None, test: Path | None = None) -> None:
    """Files named on the command line are looked at before anything runs: a named pipe as --truth or
    --test would otherwise block the command after the prepare stage."""
    if truth is not None:
        require_regular_file(truth, "truth file", "a CSV file with path,true_label columns")
    if test is not None and not Path(test).is_dir():
        require_regular_file(test, "test set", "a folder of class folders or a .zip of one")


# ================================================================================================ fit


def cmd_fit(args: Namespace) -> int:
    launched = _launch_processes(args)
    return launched if launched is not None else _with_processes(args, _cmd_fit)


def _cmd_fit(args: Namespace, dist: Dist) -> int:
    run = RunDir(args.run_dir)
    foreign = owner.ownership_problem(run.path)
    if foreign:  # data inside the folder is the sharper reason to refuse it
        return _not_ours(_run_data_overlap(run.path, args) or foreign)
    launched = _launched_worker(run)
    try:
        _require_inputs(args.truth, args.test)
        repair = _damage(run, resume=args.resume, phase=FIT)
        cfg = _resolve_config(args, run, repair)
        source = read_json(run.source, {}) or {}  # a damaged one is being repaired: written again below
        if source and Path(source.get("data", "")) != Path(args.data).resolve():
            raise UserError(f"{run.path} holds a run on {source['data']}, not {Path(args.data).resolve()}; "
                            "use a new --run-dir for other data")
        overlap = _run_data_overlap(run.path, args)
        if overlap:
            raise UserError(overlap)
        _check_processes(cfg, dist)
    except UserError as e:  # ConfigError too: a setting no stage can run with
        return _refused(run, launched, e)
    return _run_worker(run, "fit", lambda progress: _fit(run, cfg, args, source, progress, dist), quiet=args.quiet,
                       lock=launched, repair=repair)


def _not_ours(message: str) -> int:
    """A folder that is not CLeaN's: refused before anything is written in it. A launcher passes its lock
    only into a folder it claimed, so an inherited lock here is dropped without a word to that folder."""
    os.environ.pop(worker_lock.FD_VARIABLE, None)
    return _fail(message)


def _launched_worker(run: RunDir) -> WorkerLock | None:
    """The first act of a worker the app launched: it holds the run's lock already, and says "running"."""
    lock = worker_lock.inherited(run)
    if lock is not None:
        run.write_status(state=RUNNING, pid=os.getpid(), message="starting", error=None)
    return lock


def _refused(run: RunDir, launched: WorkerLock | None, error: UserError) -> int:
    """Bad input found before the work starts. Typed in a shell, the command changes nothing; a worker the
    app launched records why its run stopped (the app shows it), and for a damaged run file which command
    repairs it (`repair`: what the app's Resume runs)."""
    message = str(error)
    if launched is not None:
        with launched:
            run.write_status(state=FAILED, error=message, message=message, repair=getattr(error, "repair", None))
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


def _fit(run: RunDir, cfg: RunConfig, args: Namespace, source: dict, progress: Progress, dist: Dist) -> dict:
    from engine.data.intake import scan
    from engine.review.metrics import find_truth
    from engine.train import pipeline
    from engine.train.device import make_runtime

    run.path.mkdir(parents=True, exist_ok=True)
    record = scan(Path(args.data), root=args.root, extract_to=run.source_dir, check="header")
    # Written once the data is known to be usable, so that a refused first attempt leaves no settings behind.
    if not run.config.exists():
        cfg = _sized(cfg, record, progress, run)
        cfg = _planned(cfg, args, len(record.samples), len(record.classes), progress, run)
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
                                truth_optional=auto_truth, rt=make_runtime(cfg.device, cfg.precision, dist))
    pipeline.write_source(run, record, data=args.data, truth=truth if ctx.truth is not None else None, test=test)
    summary = pipeline.run_fit(ctx)
    waits = finetune_waits(cfg.finetune.require_decisions, run.decisions) if cfg.finetune_after_fit else None
    dist.agree(lambda: bool(cfg.finetune_after_fit and not waits))  # the other processes go on with phase (b) too
    if waits:
        progress.note(f"--finetune: {waits}")
        if not progress.show:  # asked for and not done: said even with --quiet
            print(f"--finetune: {waits}", file=sys.stderr)
    elif cfg.finetune_after_fit:
        run.write_status(phase="finetune")
        summary = pipeline.run_finetune(ctx)
    return summary


# ================================================================================================ processes


def _launch_processes(args: Namespace) -> int | None:
    """`fit --gpus N`: start N processes of this very command through torchrun (python -m
    torch.distributed.run, part of torch), one per GPU, and return its exit status; None when the command
    runs here instead (no --gpus, --gpus 1, or this is one of the N processes already). With
    `--device cpu` the N processes train on the CPU over gloo, which is how the suite tests it."""
    n = getattr(args, "gpus", None)
    if n is None:
        return None
    if n < 1:
        return _fail(f"--gpus must be at least 1, got {n}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return None if world == n else _fail(f"--gpus {n} in a torchrun launch of {world} processes")
    if n == 1:
        return None
    if args.device != "cpu":
        import torch

        have = torch.cuda.device_count()
        if have < n:
            return _fail(f"--gpus {n} needs {n} CUDA GPUs, but {have} are visible; add --device cpu to run {n} "
                         "CPU processes over gloo instead (for testing: slower than one process)")
    import engine

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(engine.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "engine", *args.argv]  # --gpus N stays: each process checks it against WORLD_SIZE
    return subprocess.run(command, env=env, check=False).returncode


def _with_processes(args: Namespace, command: Callable[[Namespace, Dist], int]) -> int:
    """Run a training command in this process; under torchrun as one of the run's processes: rank 0 runs
    the command (it is the run's worker), the others follow its stages (engine.train.pipeline.follow)."""
    from engine.train import distributed

    dist = distributed.start()
    if not dist.enabled:
        return command(args, dist)
    code, began = 1, False
    try:
        if dist.is_main:
            code = command(args, dist)
        else:
            from engine.train.pipeline import follow

            began = follow(RunDir(args.run_dir), dist)
            code = 0
    finally:  # a follower that rank 0 stopped before the work began meets it no more
        distributed.finish(dist, ok=code == 0 and (dist.is_main or began))
    return code


def _check_processes(cfg: RunConfig, dist: Dist) -> None:
    from engine.train.distributed import check_batches

    check_batches({"pretrain.batch_size": cfg.pretrain.batch_size, "classify.batch_size": cfg.classify.batch_size,
                   "finetune.batch_size": cfg.finetune.batch_size}, dist)


def _planned(cfg: RunConfig, args: Namespace, n: int, num_classes: int, progress: Progress,
             run: RunDir | None = None) -> RunConfig:
    """A new run's epochs: sized to fill its budget, or fitted to its ceiling (engine.train.budget: shrunk
    where they would overrun it; under the automatic ceiling, from FILL_MIN_N images on, pre-training also grown to fill it).

    The ceiling is recorded in seconds (config.json), so the run says what it was planned for; a plan
    that changed the epochs is also a `plan` event (events.jsonl), which the Train page shows."""
    from engine.train import budget
    from engine.train.device import make_runtime

    overrides = fit_overrides(args)
    hand = frozenset(k for k in overrides if k in _PLANNED_KEYS)

    def split_for(planned: RunConfig) -> RunConfig:  # a mixture a person chose stays theirs
        return planned if "split.covariance" in overrides else budget.split_for_epochs(planned)

    if cfg.budget_s:
        costs = budget.measure(cfg, make_runtime(cfg.device, cfg.precision), num_classes)
        planned = budget.plan(cfg, n, costs, set_by_hand=hand)
        _say_plan(f"budget {cfg.budget_s:.0f} s for {n:,} images: {planned.pretrain.epochs} pre-training and "
                  f"{planned.classify.epochs} classifier epochs (about "
                  f"{budget.estimate_seconds(planned, n, costs):.0f} s measured on this machine)", progress, run)
        return split_for(planned)
    grows = budget.fills(cfg.time_limit_s == config_mod.AUTO_TIME_LIMIT, n)
    limit = budget.time_limit(cfg, n)
    cfg = replace(cfg, time_limit_s=limit)
    if not limit or hand >= set(_PLANNED_KEYS) or (not grows and budget.fits_on_any_machine(cfg, n, limit)):
        return split_for(cfg)
    costs = budget.measure(cfg, make_runtime(cfg.device, cfg.precision), num_classes)
    sizer = budget.filled if grows else budget.capped
    capped = split_for(sizer(cfg, n, costs, limit, set_by_hand=hand))
    if capped != cfg:
        split = ("" if capped.split.covariance == cfg.split.covariance
                 else f", and the mixture with split.covariance={capped.split.covariance} for the shorter training")
        _say_plan(f"time limit {limit:.0f} s for {n:,} images: {capped.pretrain.epochs} pre-training and "
                  f"{capped.classify.epochs} classifier epochs instead of {cfg.pretrain.epochs} and "
                  f"{cfg.classify.epochs} (about {budget.estimate_seconds(capped, n, costs):.0f} s measured on "
                  f"this machine{split}; --time-limit none, or a time limit of 0 on the Train page, keeps the "
                  "epochs)", progress, run)
    return capped


def _say_plan(message: str, progress: Progress, run: RunDir | None) -> None:
    progress.note(message)
    if run is not None:
        run.append_event(kind="plan", message=message)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


# ================================================================================================ finetune


def cmd_finetune(args: Namespace) -> int:
    return _with_processes(args, _cmd_finetune)


def _cmd_finetune(args: Namespace, dist: Dist) -> int:
    run = RunDir(args.run_dir)
    foreign = owner.ownership_problem(run.path, flag="run folder")
    if foreign:
        return _not_ours(foreign)
    launched = _launched_worker(run)
    if not run.config.exists() or not run.source.exists():
        return _refused(run, launched, UserError(f"{run.path} is not a fitted run (no {run.config.name}/"
                                                 f"{run.source.name}); run `python -m engine fit` first"))
    try:
        _require_inputs(args.truth)
        repair = _damage(run, resume=args.resume, phase=FINETUNE)
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
        waits = finetune_waits(cfg.finetune.require_decisions, run.decisions)
        if waits:
            raise UserError(waits)
        _check_processes(cfg, dist)
    except UserError as e:
        return _refused(run, launched, e)
    return _run_worker(run, "finetune", lambda progress: _finetune(run, cfg, args, progress, dist), quiet=args.quiet,
                       lock=launched, repair=repair)


def _finetune(run: RunDir, cfg: RunConfig, args: Namespace, progress: Progress, dist: Dist) -> dict:
    from engine.data.intake import scan
    from engine.runs.stages import FINETUNE
    from engine.train import pipeline
    from engine.train.device import make_runtime

    source = read_json(run.source, {})
    record = scan(Path(source["root"]) if source["kind"] != "csv" else Path(source["data"]),
                  root=Path(source["root"]) if source["kind"] == "csv" else None, check="header")
    truth = args.truth or _path(source.get("truth"))
    if cfg != config_mod.load(run.config):
        config_mod.save(cfg, run.config_finetune)
    ctx = pipeline.open_context(run, cfg, record, truth=truth, test=_path(source.get("test")), progress=progress,
                                phase=FINETUNE, rt=make_runtime(cfg.device, cfg.precision, dist))
    return pipeline.run_finetune(ctx)


# ================================================================================================ shared worker


def _run_worker(run: RunDir, phase: str, body: Callable[[Progress], dict], *, quiet: bool,
                lock: WorkerLock | None = None, repair: integrity.Plan | None = None) -> int:
    """Run one phase as the run's worker: one worker per run (its lock, held to the end), status.json
    bookkeeping, cancellation, and failures reported as one sentence (bad input) or with a traceback (a bug).

    lock: the run's lock when the launcher passed it on; a worker started from a shell takes it here.
    repair: the damaged files to repair first (--resume), as engine.runs.integrity planned it.
    """
    import torch

    from engine.runs.progress import Cancelled, Progress
    from engine.train.device import GpuOutOfMemory

    owner.claim(run)  # the folder was found to be CLeaN's (or new): it gets its marker before anything else
    lock = lock or worker_lock.acquire(run, wait_s=2.0)  # a reader probing the lock holds it for microseconds
    if lock is None:
        other = run.read_status().get("pid")
        return _fail(f"another worker{f' (pid {other})' if other else ''} is already running on {run.path}")
    with lock:  # released after the last status write: a reader never sees "running" without a worker
        owner.remove_stale_temp_files(run)
        if repair is not None:
            integrity.repair(run, repair)
            _note_repair(run, repair, quiet=quiet)
        progress = Progress(run, show=not quiet)
        progress.install_signal_handlers()
        run.write_status(state=RUNNING, phase=phase, pid=os.getpid(), started_at=now_iso(), error=None, repair=None,
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
        except DamagedFile as e:  # found while a stage loaded it: named with its repair
            message, repair_phase = _damage_sentence(run, e)
            return _end(run, progress, FAILED, message, 2, repair=repair_phase)
        except UserError as e:
            return _end(run, progress, FAILED, str(e), 2)
        except Exception as e:  # a bug, not bad input (a plain ValueError included)
            traceback.print_exc()
            return _end(run, progress, FAILED, bug_message(e, where=f"in {run.log.name} or on stderr"), 1)
        run.write_status(state=DONE, stage="done", message=f"{phase} finished", eta_s=0, run_eta_s=0)
    _print_summary(summary)
    return 0


def _end(run: RunDir, progress: Progress, state: str, message: str, code: int, *, repair: str | None = None) -> int:
    progress.stage_end(state)
    run.write_status(state=state, error=None if state == CANCELLED else message, message=message,
                     eta_s=None, run_eta_s=None, repair=repair)
    if state == CANCELLED:
        print("stopped; the run continues from its last finished epoch with --resume", file=sys.stderr)
        return code
    return _fail(message, code)


def _note_repair(run: RunDir, repair: integrity.Plan, *, quiet: bool) -> None:
    names = ", ".join(run.relative(d.path) for d in repair.damage)
    redo = f"; redoing {', '.join(repair.redo)}" if repair.redo else ""
    run.append_event(kind="repair", files=[run.relative(d.path) for d in repair.damage], redo=list(repair.redo))
    if not quiet:
        print(f"repairing {names}{redo}", file=sys.stderr)


def _damage_sentence(run: RunDir, error: DamagedFile) -> tuple[str, str | None]:
    """One sentence for a damaged file found while a stage ran, with the repair (and the phase whose
    command repairs it) when it is a run file."""
    try:
        error.path.resolve().relative_to(run.path.resolve())
    except (ValueError, OSError):
        return str(error), None
    found = integrity.damage_of(run, error.path, error.reason)
    cfg = _config_or_none(run)
    plan = integrity.plan(run, [found], cfg)
    return integrity.sentence(run, plan, cfg), plan.phase


def _num(v: float | None) -> str:
    """A metric, or "n/a" where it is undefined (AUROC when no image, or every image, is mislabeled)."""
    return "n/a" if v is None or v != v else f"{v:.4f}"


def _print_summary(summary: dict) -> None:
    s = {k: v for k, v in summary.items() if k != "kind"}
    line = (f"{s['phase']}: {s['images']} images, {s['classes']} classes, {s['flagged']} flagged "
            f"({s['flagged'] / max(s['images'], 1):.1%}), {s['seconds']:.0f} s on {s['device']}")
    print(line)
    if s.get("min_competence") is not None and count_is_rough(s):
        print(f"  the model agrees with {s['competence']:.0%} of the labels it believes clean (held out; "
              f"{s['min_competence']:.0%} needed before a label changes by itself). {ROUGH_COUNT}")
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

    run = RunDir(args.run_dir)
    # What the export reads: a damaged samples.csv or source.json is named with its repair, not parsed.
    found = [d for d in integrity.find_damage(run) if d.path in (run.samples, run.source)]
    if found:
        cfg = _config_or_none(run)
        return _fail(integrity.sentence(run, integrity.plan(run, found, cfg), cfg))
    try:
        out = export_labels(args.run_dir, args.out, args.format, overwrite=args.overwrite,
                            auto_relabel=args.auto_relabel, top=args.top,
                            drop_duplicates=args.drop_duplicates, drop_outliers=args.drop_outliers)
    except (ExportError, UserError) as e:
        return _fail(str(e))
    print(f"wrote {out}")
    _print_export_summary(args)
    return 0


def _print_export_summary(args: Namespace) -> None:
    """What the export changed by itself, and what waits for a person: said plainly after every export."""
    from engine.review.export import corrected_labels

    policy = args.auto_relabel
    counts = corrected_labels(args.run_dir, auto_relabel=policy, drop_duplicates=args.drop_duplicates,
                              drop_outliers=args.drop_outliers)["status"].value_counts()
    parts = [f"{int(counts[s])} {s}" for s in ("auto-relabeled", "needs-review", "relabeled", "kept", "discarded",
                                               "duplicate-dropped", "outlier-dropped")
             if counts.get(s)]
    print("  " + (", ".join(parts) if parts else "no label changed") + f" (--auto-relabel {policy})")


def cmd_status(args: Namespace) -> int:
    run = RunDir(args.run_dir)
    try:
        status = run.load_status()
    except DamagedFile:
        status = {"damaged": True}  # named below, with every other damaged file
    if not status:
        return _fail(f"{run.path} holds no run")
    found = integrity.find_damage(run)  # a script asks `status` whether a run is sound: read-only, quick
    if found:
        cfg = _config_or_none(run)
        return _fail(integrity.sentence(run, integrity.plan(run, found, cfg), cfg))
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

