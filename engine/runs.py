"""A run is a folder; disk is the source of truth.

Layout of `RUN/` (all writes atomic: temp file + os.replace, so a reader polling while training never
sees half a file):

    config.json        the full RunConfig, written once
    source.json        where the data came from (data path, kind, truth/test files)
    status.json        state, stage, step/total, message, updated_at, pid, completed_stages
    events.jsonl       one JSON object per epoch / stage event
    worker.log         stdout+stderr of a run started by the app
    data/              manifest.csv, images.npy (decoded uint8 cache), intake.json
    checkpoints/       <stage>.pt (finished stage) and <stage>.last.pt (resume point), weights_only
    predictions.npz    phase (a)/(b) outputs per image (probs, loss history, features)
    samples.csv        one row per image (see README "Run folder")
    split.json         the fitted mixture (for the loss histogram overlay)
    umap.npy           (N, 2) float32 embedding map, rows aligned with samples.csv
    decisions.sqlite   human review decisions (engine.decisions)
    metrics.json       detection metrics when a truth file is known

This module imports no torch: the app reads runs through it.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

TERMINAL_STATES = ("done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: Path, **arrays: Any) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_npy(path: Path, array: Any) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NaN/inf (e.g. an undefined AUROC) are written as null, which every reader accepts."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite(o: Any) -> Any:
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):  # numpy scalars and arrays
        o = o.tolist()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return o.as_posix()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


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


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- paths
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def source(self) -> Path:
        return self.path / "source.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "worker.log"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.npz"

    @property
    def samples(self) -> Path:
        return self.path / "samples.csv"

    @property
    def samples_before(self) -> Path:
        """samples.csv as it was after phase (a), kept when phase (b) rewrites samples.csv."""
        return self.path / "samples_phase_a.csv"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def umap(self) -> Path:
        return self.path / "umap.npy"

    @property
    def decisions(self) -> Path:
        return self.path / "decisions.sqlite"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def checkpoint(self, stage: str, last: bool = False) -> Path:
        return self.checkpoints / (f"{stage}.last.pt" if last else f"{stage}.pt")

    # ---- status
    def read_status(self) -> dict[str, Any]:
        return read_json(self.status_file, default={}) or {}

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into status.json (single writer: the worker, or the launcher before it starts)."""
        status = self.read_status()
        status.update(fields)
        status["updated_at"] = now_iso()
        atomic_write_json(self.status_file, status)
        return status

    def completed_stages(self) -> list[str]:
        return list(self.read_status().get("completed_stages", []))

    def mark_stage_done(self, stage: str) -> None:
        done = self.completed_stages()
        if stage not in done:
            done.append(stage)
        self.write_status(completed_stages=done)

    def unmark_stages(self, stages: list[str]) -> None:
        done = [s for s in self.completed_stages() if s not in stages]
        self.write_status(completed_stages=done)

    # ---- events
    def append_event(self, **fields: Any) -> None:
        fields.setdefault("t", round(time.time(), 3))
        line = json.dumps(fields, default=_json_default)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a+b") as f:  # one short append: atomic enough for JSONL
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line torn by a kill -9: end it, so this event stays readable
                    f.write(b"\n")
            f.write((line + "\n").encode("utf-8"))

    def read_events(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill -9 mid-write
                continue
        return out


def effective_state(status: dict[str, Any], stale_after: float = 120.0) -> str:
    """The state a reader should show: 'running' with a dead worker pid reads as 'failed'."""
    state = status.get("state", "new")
    if state in ACTIVE_STATES and status.get("pid") and not pid_alive(int(status["pid"])):
        return "failed"
    return state
