"""Run states, and the one function readers call to know a run's state: `effective_state`.

    new          no status.json yet
    queued       the launcher wrote it and holds the run's lock; the worker process is starting
    running      the worker's first write
    done         the worker finished (its last write)
    failed       the worker stopped on an error it reported (bad input: one sentence; a bug: "please report this")
    cancelled    stopped by request (Stop, SIGTERM, Ctrl-C); resumable
    interrupted  never written: what queued or running reads as once the run's lock is free — the worker
                 died without a word (kill -9, out of memory, server killed); resumable

Liveness is the run's worker lock (engine.runs.worker_lock), not a pid: a pid can be reused, a lock
cannot outlive its holder. This module imports no torch.
"""

from __future__ import annotations

from typing import Any

from engine.runs import worker_lock
from engine.runs.rundir import RunDir

NEW, QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "new", "queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = (QUEUED, RUNNING)  # a live worker owns the run
TERMINAL_STATES = (DONE, FAILED, CANCELLED)  # written by the worker as its last act
RESUMABLE_STATES = (FAILED, CANCELLED, INTERRUPTED)  # offer "Resume"
STATES = (NEW, *ACTIVE_STATES, *TERMINAL_STATES, INTERRUPTED)


def effective_state(run: RunDir, status: dict[str, Any] | None = None) -> str:
    """The state a reader should show: queued/running whose worker lock is free reads as "interrupted".

    `status` is the run's status.json when the caller read it already.
    """
    status = run.read_status() if status is None else status
    state = status.get("state") or NEW
    if state in ACTIVE_STATES and not worker_lock.is_held(run):
        return INTERRUPTED
    return state
