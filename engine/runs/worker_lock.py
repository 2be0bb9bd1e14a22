"""The run's one lock, RUN/.worker.lock: flock()ed for as long as a worker owns the run.

Everything about liveness comes from this lock:

* the launcher (engine.runs.jobs) takes it before the worker process exists, writes "queued", and
  hands the open lock file to the child it starts (inherited across exec; the child is told its
  descriptor in CLEAN_WORKER_LOCK_FD), then closes its own copy: from "queued" to the worker's exit
  the lock is held without a gap, whatever the child's start-up takes;
* a worker started from a shell (`python -m engine fit ...`) takes it itself;
* the kernel releases it when the last process holding the file is gone — a normal exit, a crash, a
  kill -9, a killed server — so a run whose status.json says queued or running while its lock is free
  has lost its worker: readers see it as "interrupted" (engine.runs.status).

Whoever holds the lock is the one writer of status.json: the launcher before the child exists, then
the worker; `jobs.stop` takes it after a worker was killed before it could record the cancellation.
Readers only probe it (`is_held`), with a non-blocking shared flock they drop at once; a worker that
starts during a probe waits a moment (`acquire(wait_s=...)`) instead of failing.

A re-ranking of the review queue (engine.runs.jobs.start_rerank) is guarded the same way by its own
lock file, RUN/.rerank.lock (`path=`), passed on in CLEAN_RERANK_LOCK_FD: one re-ranking at a time per
run, alive exactly while its lock is held, and independent of the run's worker.

Torch-free; Linux and macOS (flock).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from engine.runs.rundir import RunDir

FD_VARIABLE = "CLEAN_WORKER_LOCK_FD"  # set by the launcher in the child's environment
RERANK_FD_VARIABLE = "CLEAN_RERANK_LOCK_FD"  # ... for the lock of a re-ranking
_RETRY_S = 0.02


class WorkerLock:
    """The held lock of one run; `close` (or the end of every process holding it) frees it."""

    def __init__(self, run: RunDir, file: IO[str], variable: str = FD_VARIABLE) -> None:
        self.run = run
        self._file: IO[str] | None = file
        self.variable = variable  # how a child is told it holds this lock

    def fileno(self) -> int:
        if self._file is None:
            raise ValueError("the worker lock was released")
        return self._file.fileno()

    def child_environment(self) -> dict[str, str]:
        """What a child process started with pass_fds=(lock.fileno(),) needs to know it holds the lock."""
        return {self.variable: str(self.fileno())}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # the lock goes with the last descriptor of this open file (a child may keep one)
            self._file = None

    def __enter__(self) -> WorkerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def acquire(run: RunDir, *, wait_s: float = 0.0, path: Path | None = None,
            variable: str = FD_VARIABLE) -> WorkerLock | None:
    """Take the run's lock (creating the run folder), trying for up to `wait_s`; None when another holds it.
    `path`: another lock file of the run (default: RunDir.worker_lock)."""
    run.path.mkdir(parents=True, exist_ok=True)
    f = open(path or run.worker_lock, "a+")  # noqa: SIM115 - held open for as long as the lock is held
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return WorkerLock(run, f, variable)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(_RETRY_S)


def inherited(run: RunDir, *, path: Path | None = None, variable: str = FD_VARIABLE) -> WorkerLock | None:
    """The lock of `run` when the launcher passed it to this process, else None.

    The variable is removed from the environment either way: processes this one starts do not own the
    run. A descriptor that is not this run's lock file (another run's, or none) is not adopted.
    """
    value = os.environ.pop(variable, None)
    if value is None or not value.isdigit():
        return None
    fd = int(value)
    try:
        theirs = os.fstat(fd)
    except OSError:
        return None  # nothing open under that number
    try:
        ours = os.stat(path or run.worker_lock)
        same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
    except OSError:
        same = False
    if not same:
        os.close(fd)  # another run's lock: holding it would keep that run looking alive
        return None
    f = os.fdopen(fd, "a+")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: this only confirms it
    except BlockingIOError:
        f.close()
        return None
    os.set_inheritable(fd, False)
    return WorkerLock(run, f, variable)


def is_held(run: RunDir, *, path: Path | None = None) -> bool:
    """True while some process holds the run's lock (or `path`): its worker (or launcher) is alive."""
    try:
        fd = os.open(path or run.worker_lock, os.O_RDONLY | os.O_NONBLOCK)  # never waits, even on a pipe put there
    except (FileNotFoundError, NotADirectoryError):
        return False
    except PermissionError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
