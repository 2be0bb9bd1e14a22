"""Start, watch and stop the background worker of a run.

The app never trains in its own process: `start` launches the same command a user would type,
`python -m engine fit DATA --run-dir RUN ...`, as a new process group with its output in
`RUN/worker.log`. Everything a page shows is then read back from the run folder, so a browser
refresh, a second tab or a restarted server simply re-attach to the run.

One run at a time per workspace (one GPU, two CPU cores), decided by the runs' own worker locks
(engine.runs.worker_lock): a workspace is busy while one of its runs' locks is held. There is no
second, workspace-wide lock file to go stale: a lock the kernel frees when its worker dies cannot
outlive the run, and a pointer file would only repeat what the locks already say (and could lie). Two
launches racing each take their own run's lock first and then look at the others', so at worst both
refuse, never both start.

A re-ranking of the review queue (`start_rerank`: `python -m engine rerank RUN`, seconds on a CPU) is not
a run: it has its own lock (RUN/.rerank.lock, handed to the child as the worker's is), one per run, may
run beside a training worker, and never touches status.json; it writes RUN/rerank.csv, RUN/rerank.json
and its output to RUN/rerank.log.

The launcher writes status.json once, "queued" (or "failed" when the child cannot start), while it
holds the run's lock and before the worker exists; from then on the worker is its only writer.

A run folder is CLeaN's (engine.runs.owner): the launcher refuses a folder of anyone else's before it
writes anything, and gives a new run its marker first. Resuming a run whose files are damaged repairs
them: `resume` asks engine.runs.integrity which phase's command can, and passes `--resume`.

This module imports neither torch nor streamlit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.runs import integrity, owner, worker_lock
from engine.runs.atomic import atomic_write_json, now_iso, read_json
from engine.runs.rundir import RunDir
from engine.runs.status import ACTIVE_STATES, CANCELLED, FAILED, QUEUED, effective_state

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS_FOLDER = "runs"  # WORKSPACE/runs/<run id>/: the runs of a workspace
STOP_GRACE_S = 10.0


class JobError(RuntimeError):
    """A run could not be started or stopped; the message says why and what to do."""


# ----------------------------------------------------------------------------- commands


def engine_command(python: str | None = None) -> list[str]:
    """The command prefix of every worker: this interpreter running the `engine` package."""
    return [python or sys.executable, "-m", "engine"]


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as `2026-11-27T14-05-12_ab12`."""
    now = now or datetime.now(UTC).astimezone()
    return f"{now:%Y-%m-%dT%H-%M-%S}_{secrets.token_hex(2)}"


# --quiet: no terminal progress bars in worker.log (the app draws its own from status.json), so the
# log keeps what a person needs when a run fails: messages and tracebacks.
def fit_args(data: Path, run_dir: Path, flags: Sequence[str] = ()) -> list[str]:
    return ["fit", str(data), "--run-dir", str(run_dir), *flags, "--quiet"]


def finetune_args(run_dir: Path, flags: Sequence[str] = ()) -> list[str]:
    return ["finetune", str(run_dir), *flags, "--quiet"]


# ----------------------------------------------------------------------------- start


def start(
    data: Path,
    run_dir: Path,
    flags: Sequence[str] = (),
    *,
    workspace: Path | None = None,
    command_prefix: Sequence[str] | None = None,
) -> int:
    """Launch phase (a) in the background: `python -m engine fit DATA --run-dir RUN *flags --quiet`.

    Args:
        data: dataset folder (or .zip / CSV) as the CLI takes it.
        run_dir: the new run folder (created).
        flags: extra `fit` flags, e.g. ["--loss", "ce", "--epochs", "3"].
        workspace: the workspace whose runs may not run at the same time; default: the folder above
            `run_dir`'s parent (`WORKSPACE/runs/<id>` -> `WORKSPACE`).
        command_prefix: replaces `python -m engine` (tests run a fake worker this way).

    Returns:
        The worker's pid. Raises JobError when another run is active or the process cannot start.
    """
    run_dir = Path(run_dir).resolve()
    return launch(run_dir, fit_args(Path(data), run_dir, flags), phase="fit", workspace=workspace,
                  command_prefix=command_prefix)


def start_finetune(
    run_dir: Path,
    flags: Sequence[str] = (),
    *,
    workspace: Path | None = None,
    command_prefix: Sequence[str] | None = None,
) -> int:
    """Launch phase (b) on a fitted run: `python -m engine finetune RUN *flags --quiet`."""
    run_dir = Path(run_dir).resolve()
    if not RunDir(run_dir).samples.exists():
        raise JobError(f"run {run_dir.name} has no samples.csv yet: fine-tuning needs a finished phase (a)")
    return launch(run_dir, finetune_args(run_dir, flags), phase="finetune", workspace=workspace,
                  command_prefix=command_prefix)


def resume(
    run_dir: Path,
    *,
    workspace: Path | None = None,
    command_prefix: Sequence[str] | None = None,
) -> int:
    """Continue an interrupted (or failed) run: `fit DATA --run-dir RUN --resume`, or `finetune RUN --resume`
    for phase (b) — unless a damaged phase (a) file makes `fit` the command that repairs it."""
    run_dir = Path(run_dir).resolve()
    rd = RunDir(run_dir)
    status = rd.read_status()
    # What the worker said when it stopped on a damaged file (it loads checkpoints as torch does), else
    # what the files show now.
    damage = integrity.find_damage(rd)
    fit_needed = status.get("repair") == "fit" or (bool(damage) and integrity.plan(rd, damage).fit_needed)
    if status.get("phase") == "finetune" and not fit_needed:
        return start_finetune(run_dir, ["--resume"], workspace=workspace, command_prefix=command_prefix)
    data = run_data_path(run_dir)
    if data is None:
        raise JobError(f"run {run_dir.name} does not say which dataset it used (no source.json or launch.json)")
    return launch(run_dir, fit_args(data, run_dir, ["--resume"]), phase="fit", workspace=workspace,
                  command_prefix=command_prefix)


def run_data_path(run_dir: Path) -> Path | None:
    """The DATA argument a run was started with: source.json (engine) first, else the app's launch record."""
    source = read_json(RunDir(run_dir).source, default=None) or {}
    if source.get("data"):
        return Path(source["data"])
    launch_record = read_json(RunDir(run_dir).launch, default=None) or {}
    return Path(launch_record["data"]) if launch_record.get("data") else None


def launch(
    run_dir: Path,
    args: Sequence[str],
    *,
    phase: str,
    workspace: Path | None = None,
    command_prefix: Sequence[str] | None = None,
) -> int:
    """The one way a worker starts: take the run's lock, write "queued", start the child holding the lock."""
    run_dir = Path(run_dir).resolve()
    workspace = Path(workspace).resolve() if workspace else run_dir.parent.parent
    foreign = owner.ownership_problem(run_dir, flag="run folder")
    if foreign:
        raise JobError(foreign)
    # Early, friendly refusal before anything is created; the run's own lock below settles races.
    busy = active_run(workspace)
    if busy is not None:
        raise JobError(_busy_message(busy))
    created = not run_dir.exists()
    rd = RunDir(run_dir)
    owner.claim(rd)  # the marker first: the folder is a CLeaN run before anything else is in it
    lock = worker_lock.acquire(rd)
    other = active_run(workspace, besides=run_dir) if lock is not None else run_dir
    if lock is None or other is not None:
        if lock is not None:
            lock.close()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise JobError(_busy_message(other or run_dir))
    command = [*(command_prefix or engine_command()), *args]
    data = args[1] if phase == "fit" and len(args) > 1 else None
    try:
        # Merge-write: completed_stages stays, it is what --resume continues from. The worker writes its
        # own pid and "running" as its first act; no other field of status.json is the launcher's.
        rd.write_status(state=QUEUED, phase=phase, step=0, total=0, message="starting", pid=None, error=None,
                        images_per_s=None, eta_s=None, run_eta_s=None, started_at=now_iso())
        atomic_write_json(rd.launch, {"command": command, "phase": phase, "data": data, "at": now_iso()})
        with open(rd.log, "ab") as log:
            log.write(f"# {now_iso()} {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Stop signals the worker and its loaders
                pass_fds=(lock.fileno(),),  # the child holds the run's lock from its first instruction
                env={**os.environ, "PYTHONUNBUFFERED": "1", **lock.child_environment()},
            )
    except OSError as e:
        rd.write_status(state=FAILED, error=f"could not start the worker: {e}")
        raise JobError(f"could not start the worker: {e}") from e
    finally:
        lock.close()  # the child's copy keeps it held
    # The pid goes to the launch record, not status.json: Stop can signal a worker that is still starting.
    atomic_write_json(rd.launch, {**(read_json(rd.launch, default={}) or {}), "pid": proc.pid})
    return proc.pid


def rerank_args(run_dir: Path) -> list[str]:
    return ["rerank", str(run_dir), "--quiet"]


def start_rerank(run_dir: Path, *, command_prefix: Sequence[str] | None = None) -> int | None:
    """Re-rank the review queue in the background: `python -m engine rerank RUN --quiet`.

    Returns the child's pid, or None when a re-ranking of this run is running already (nothing started).
    Raises JobError when the run has no results yet or the process cannot start.
    """
    run_dir = Path(run_dir).resolve()
    rd = RunDir(run_dir)
    if not rd.samples.exists():
        raise JobError(f"run {run_dir.name} has no samples.csv yet: re-ranking needs a finished phase (a)")
    lock = worker_lock.acquire(rd, path=rd.rerank_lock, variable=worker_lock.RERANK_FD_VARIABLE)
    if lock is None:
        return None
    command = [*(command_prefix or engine_command()), *rerank_args(run_dir)]
    try:
        with open(rd.rerank_log, "ab") as log:
            log.write(f"# {now_iso()} {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock.fileno(),),
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **lock.child_environment()})
    except OSError as e:
        raise JobError(f"could not start the re-ranking: {e}") from e
    finally:
        lock.close()  # the child's copy keeps it held
    return proc.pid


def rerank_running(run_dir: Path) -> bool:
    """True while a re-ranking of the run is running (its lock is held)."""
    rd = RunDir(run_dir)
    return worker_lock.is_held(rd, path=rd.rerank_lock)


# ----------------------------------------------------------------------------- watch


def poll(run_dir: Path) -> dict[str, Any]:
    """status.json with `state` as a reader should show it (engine.runs.status.effective_state); writes nothing."""
    rd = RunDir(run_dir)
    status = rd.read_status()
    pid = _worker_pid(rd, status)
    if pid:
        _reap(pid)
    return {**status, "state": effective_state(rd, status)} if status else status


def is_active(run_dir: Path) -> bool:
    return poll(run_dir).get("state") in ACTIVE_STATES


def runs_root(workspace: Path) -> Path:
    return Path(workspace) / RUNS_FOLDER


def active_run(workspace: Path, *, besides: Path | None = None) -> Path | None:
    """The workspace's run whose worker lock is held (its worker is alive), if any; `besides` is left out."""
    root = runs_root(workspace)
    if not root.is_dir():
        return None
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if besides is not None and run_dir == Path(besides):
            continue
        if worker_lock.is_held(RunDir(run_dir)):
            return run_dir
    return None


def log_tail(run_dir: Path, lines: int = 40) -> str:
    """The last lines of worker.log (where tracebacks end up)."""
    log = RunDir(run_dir).log
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))  # a log can grow large; the tail is all we show
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# ----------------------------------------------------------------------------- stop


def stop(run_dir: Path, *, grace_s: float = STOP_GRACE_S) -> dict[str, Any]:
    """SIGTERM the worker's process group (it checkpoints and writes "cancelled"); SIGKILL after `grace_s`.

    Returns the status as a reader sees it. A run that was not active is returned unchanged.
    """
    run_dir = Path(run_dir).resolve()
    rd = RunDir(run_dir)
    status = poll(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return status
    pid = _worker_pid(rd, status)
    if pid:
        _signal_group(pid, signal.SIGTERM)
        if not _wait_released(rd, pid, grace_s):
            _signal_group(pid, signal.SIGKILL)
            _wait_released(rd, pid, 5.0)
    # Killed before it could record the cancellation itself: the lock is free now, and its holder writes.
    lock = worker_lock.acquire(rd, wait_s=1.0)
    if lock is not None:
        with lock:
            if rd.read_status().get("state") in ACTIVE_STATES:
                rd.write_status(state=CANCELLED, message="stopped by the user", eta_s=None, run_eta_s=None)
    return poll(run_dir)


# ----------------------------------------------------------------------------- devices


def detect_devices(timeout_s: float = 120.0, command_prefix: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m engine devices --json` in a subprocess (the caller never imports torch).

    Returns `{"cuda": bool, "devices": [{"name", "memory_gb"}], "default": "cpu"|"cuda"}`; on any failure
    the CPU-only answer with an "error" key saying what went wrong.
    """
    command = [*(command_prefix or engine_command()), "devices", "--json"]
    try:
        out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        if not isinstance(info, dict):
            raise ValueError("devices --json did not print an object")
        info.setdefault("devices", [])
        info["cuda"] = bool(info.get("cuda"))
        info.setdefault("default", "cuda" if info["cuda"] else "cpu")
        return info
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"cuda": False, "devices": [], "default": "cpu", "error": _short_error(e)}


# ----------------------------------------------------------------------------- internals


def _busy_message(run_dir: Path) -> str:
    return (f"run {run_dir.name} is still active; stop it or wait for it to finish before starting another "
            "(one run at a time)")


def _worker_pid(run: RunDir, status: dict[str, Any]) -> int | None:
    """The worker's pid: its own record in status.json, else (still starting) the launcher's launch.json."""
    pid = status.get("pid") or (read_json(run.launch, default={}) or {}).get("pid")
    return int(pid) if pid else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made the worker its group's leader: pgid == pid
    except ProcessLookupError:
        try:
            os.kill(pid, sig)  # a worker started elsewhere (e.g. from a shell) may not lead a group
        except ProcessLookupError:
            pass
    except PermissionError as e:
        raise JobError(f"not allowed to stop process {pid}: {e}") from e


def _wait_released(run: RunDir, pid: int, timeout_s: float) -> bool:
    """Wait until the run's worker lock is free (its worker is gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pid)
        if not worker_lock.is_held(run):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status of a worker this process started, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (another server process started it): nothing to collect


def _short_error(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        tail = (e.stderr or "").strip().splitlines()[-1:] or [f"exit code {e.returncode}"]
        return f"`python -m engine devices` failed: {tail[0]}"
    if isinstance(e, subprocess.TimeoutExpired):
        return "`python -m engine devices` timed out"
    return f"`python -m engine devices` failed: {e}"
