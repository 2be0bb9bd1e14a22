"""Run states and worker liveness. This module imports no torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TERMINAL_STATES = ("done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (exited, not yet reaped) still answers kill(0); treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def effective_state(status: dict[str, Any], stale_after: float = 120.0) -> str:
    """The state a reader should show: 'running' with a dead worker pid reads as 'failed'."""
    state = status.get("state", "new")
    if state in ACTIVE_STATES and status.get("pid") and not pid_alive(int(status["pid"])):
        return "failed"
    return state
