"""Start, watch and stop the background worker of a run.

The app never trains in its own process: `start` launches the same command a user would type,
`python -m engine fit DATA --run-dir RUN ...`, as a new process group with its output in
`RUN/worker.log`. Everything a page shows is then read back from the run folder, so a browser
refresh, a second tab or a restarted server simply re-attach to the run.

One run at a time per workspace (one GPU, two CPU cores): a lock file `WORKSPACE/active_run.json`
names the run that holds it. A lock whose run is no longer active is stale and is taken over.

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

from engine.runs.status import ACTIVE_STATES, pid_alive
from engine.runs.rundir import RunDir
from engine.runs.atomic import atomic_write_json, now_iso, read_json

LOCK_NAME = "active_run.json"
LAUNCH_NAME = "launch.json"  # the exact command the app ran, for the record and for resume
REPO_ROOT = Path(__file__).resolve().parents[2]
# A queued run whose worker never reported a pid (the launcher died between the two writes) is given
# this long before it reads as failed, so a crashed launch cannot hold the lock forever.
QUEUED_TIMEOUT_S = 60.0
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
        workspace: folder holding the active-run lock; default: the folder above `run_dir`'s parent
            (`WORKSPACE/runs/<id>` -> `WORKSPACE`).
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
    """Continue an interrupted run: `fit DATA --run-dir RUN --resume`, or `finetune RUN` for phase (b)."""
    run_dir = Path(run_dir).resolve()
    status = RunDir(run_dir).read_status()
    if status.get("phase") == "finetune":
        return start_finetune(run_dir, workspace=workspace, command_prefix=command_prefix)
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
    launch_record = read_json(Path(run_dir) / LAUNCH_NAME, default=None) or {}
    return Path(launch_record["data"]) if launch_record.get("data") else None


def launch(
    run_dir: Path,
    args: Sequence[str],
    *,
    phase: str,
    workspace: Path | None = None,
    command_prefix: Sequence[str] | None = None,
) -> int:
    """The one way a worker starts: take the lock, write status "queued", Popen, record the pid."""
    run_dir = Path(run_dir).resolve()
    workspace = Path(workspace).resolve() if workspace else run_dir.parent.parent
    # Early, friendly refusal before anything is created; the O_EXCL lock below settles races.
    busy = active_run(workspace)
    if busy is not None:
        raise JobError(_busy_message(busy))
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _acquire_lock(workspace, run_dir, phase)
    except JobError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise

    rd = RunDir(run_dir)
    command = [*(command_prefix or engine_command()), *args]
    data = args[1] if phase == "fit" and len(args) > 1 else None
    # Merge-write only the launcher's fields: completed_stages stays, it is what --resume continues from.
    rd.write_status(state="queued", phase=phase, step=0, total=0, message="starting", pid=None, error=None,
                    images_per_s=None, eta_s=None, started_at=now_iso())
    atomic_write_json(run_dir / LAUNCH_NAME, {"command": command, "phase": phase, "data": data, "at": now_iso()})
    try:
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
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
    except OSError as e:
        rd.write_status(state="failed", error=f"could not start the worker: {e}")
        _release_lock(workspace, run_dir)
        raise JobError(f"could not start the worker: {e}") from e
    # The child needs >50 ms of interpreter start-up before it can write status.json itself, so this
    # merge-write of the pid cannot overwrite a status the worker already wrote.
    rd.write_status(pid=proc.pid)
    return proc.pid


# ----------------------------------------------------------------------------- watch


def poll(run_dir: Path) -> dict[str, Any]:
    """status.json with the state a reader should show; a dead worker's run is marked failed on disk."""
    rd = RunDir(run_dir)
    status = rd.read_status()
    if status.get("state") not in ACTIVE_STATES:
        return status
    pid = status.get("pid")
    if pid:
        _reap(int(pid))
        if pid_alive(int(pid)):
            return status
        # Re-read: the worker writes its final state and then exits, so the first read may predate it.
        status = rd.read_status()
        if status.get("state") in ACTIVE_STATES:
            status = rd.write_status(
                state="failed",
                error=status.get("error") or f"the worker (pid {pid}) exited without finishing; see worker.log",
            )
        return status
    if _age_s(status) > QUEUED_TIMEOUT_S:
        status = rd.write_status(state="failed", error="the worker never started; see worker.log")
    return status


def is_active(run_dir: Path) -> bool:
    return poll(run_dir).get("state") in ACTIVE_STATES


def active_run(workspace: Path) -> Path | None:
    """The run folder holding the workspace lock while its worker is active; clears a stale lock."""
    lock = Path(workspace) / LOCK_NAME
    record = read_json(lock, default=None)
    if record is None:
        if lock.exists() and _file_age_s(lock) > 5.0:  # unreadable and not being written: stale
            lock.unlink(missing_ok=True)
        return None
    run_dir = Path(record.get("run_dir", ""))
    status = poll(run_dir) if run_dir.is_dir() else {}
    state = status.get("state")
    if state in ACTIVE_STATES:
        return run_dir
    if state is None and _file_age_s(lock) < QUEUED_TIMEOUT_S:
        return run_dir  # lock taken a moment ago, status.json not written yet
    lock.unlink(missing_ok=True)
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

    Returns the final status. A run that was not active is returned unchanged.
    """
    run_dir = Path(run_dir).resolve()
    rd = RunDir(run_dir)
    status = poll(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return status
    pid = status.get("pid")
    if pid and pid_alive(int(pid)):
        _signal_group(int(pid), signal.SIGTERM)
        if not _wait_dead(int(pid), grace_s):
            _signal_group(int(pid), signal.SIGKILL)
            _wait_dead(int(pid), 5.0)
    status = rd.read_status()
    if status.get("state") in ACTIVE_STATES:  # killed before it could record the cancellation itself
        status = rd.write_status(state="cancelled", message="stopped by the user", eta_s=None)
    _release_lock(run_dir.parent.parent, run_dir)
    return status


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


def _acquire_lock(workspace: Path, run_dir: Path, phase: str) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    lock = workspace / LOCK_NAME
    body = json.dumps({"run_dir": str(run_dir), "phase": phase, "at": now_iso()}).encode()
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = active_run(workspace)  # clears the lock if its run is over
            if holder is not None:
                raise JobError(_busy_message(holder)) from None
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return
    raise JobError("could not take the workspace's run lock; try again")


def _release_lock(workspace: Path, run_dir: Path) -> None:
    lock = Path(workspace) / LOCK_NAME
    record = read_json(lock, default=None) or {}
    if Path(record.get("run_dir", "")) == Path(run_dir):
        lock.unlink(missing_ok=True)


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


def _wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pid)
        if not pid_alive(pid):
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


def _age_s(status: dict[str, Any]) -> float:
    stamp = status.get("updated_at") or status.get("started_at")
    if not stamp:
        return 0.0
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return 0.0


def _file_age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _short_error(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        tail = (e.stderr or "").strip().splitlines()[-1:] or [f"exit code {e.returncode}"]
        return f"`python -m engine devices` failed: {tail[0]}"
    if isinstance(e, subprocess.TimeoutExpired):
        return "`python -m engine devices` timed out"
    return f"`python -m engine devices` failed: {e}"
