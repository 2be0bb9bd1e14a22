"""The workspace memory: review decisions remembered across runs, by image content.

The workspace (`$CLEAN_WORKSPACE`, else `<repo>/workspace`) holds `memory.sqlite`, one memory shared
by every run of the app and of the command line, wherever the run folder is:

- `open_run_store(run)` is the run's decision store as the app and the CLI write through: each write is
  committed to `RUN/decisions.sqlite` first, then passed on here. If the memory fails (a full disk, a
  foreign file in its place) the run's decision stands and `store.memory_error` says what happened.
  A run started with `fit --no-memory` (`review.memory=false` in its config.json) never writes here.
- `seed_run_store(run, paths, sha256s, classes)` starts a new run with the decisions remembered for its
  images: a re-upload, renamed or moved files. An image matches a remembered decision by its sha256;
  where the sha256 of either side is unknown, by its path. Two known sha256s that differ are two
  different images, even under the same path, so a decision never jumps to other content.

Schema (version 1):

    memory(key TEXT PRIMARY KEY,          -- the image's sha256, or 'path:' + its path where it is unknown
           sha256 TEXT, path TEXT NOT NULL,   -- the path it was last decided under
           action TEXT NOT NULL, label TEXT, decided_at TEXT NOT NULL, source TEXT,
           run TEXT)                      -- the run folder that wrote it
    memory_log(id INTEGER PRIMARY KEY AUTOINCREMENT, key, sha256, path, action, label, prev_action,
           prev_label, decided_at, source, run)   -- every write, with the value it replaced

A new decision in any run replaces the remembered one (the latest decision about an image wins). A clear
or an undo in a run takes back only what that run said: it is applied where the memory still holds the
value the run replaced (compare-and-set, as DecisionStore.restore does), so an undo in one run never
wipes a later decision from another run. Torch-free.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import config as config_mod
from engine.errors import UserError
from engine.review.decisions import (
    ACTIONS,
    UNLABELLED_ACTIONS,
    Change,
    Decision,
    DecisionStore,
    connect,
    refuse_foreign,
)
from engine.review.hashes import read_hashes
from engine.runs.atomic import now_iso
from engine.runs.rundir import RunDir

WORKSPACE_ENV = "CLEAN_WORKSPACE"
MEMORY_FILE = "memory.sqlite"
MEMORY_SOURCE = "memory"  # the source of decisions a run started with
SCHEMA_VERSION = 1
_REPO_ROOT = Path(__file__).resolve().parents[2]
_ACTION_LIST = ", ".join(f"'{a}'" for a in ACTIONS)
_SCHEMA = (
    f"""CREATE TABLE memory (
        key TEXT PRIMARY KEY,
        sha256 TEXT,
        path TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ({_ACTION_LIST})),
        label TEXT,
        decided_at TEXT NOT NULL,
        source TEXT,
        run TEXT
    )""",
    """CREATE TABLE memory_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        sha256 TEXT,
        path TEXT NOT NULL,
        action TEXT,
        label TEXT,
        prev_action TEXT,
        prev_label TEXT,
        decided_at TEXT NOT NULL,
        source TEXT,
        run TEXT
    )""",
    "CREATE INDEX memory_path ON memory(path)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_COLUMNS: dict[str, frozenset[str]] = {
    "memory": frozenset({"key", "sha256", "path", "action", "label", "decided_at", "source", "run"}),
    "memory_log": frozenset({"id", "key", "sha256", "path", "action", "label", "prev_action", "prev_label",
                             "decided_at", "source", "run"}),
}
_LOG_KEYS = ("id", "key", "sha256", "path", "action", "label", "prev_action", "prev_label", "decided_at", "source",
             "run")


def workspace_root() -> Path:
    """The folder the app keeps its files in and the memory lives in: $CLEAN_WORKSPACE, else <repo>/workspace."""
    return Path(os.environ.get(WORKSPACE_ENV) or _REPO_ROOT / "workspace").expanduser().resolve()


def memory_path() -> Path:
    return workspace_root() / MEMORY_FILE


@dataclass(frozen=True)
class Remembered:
    """One remembered decision."""

    sha256: str | None
    path: str
    action: str
    label: str | None
    decided_at: str
    source: str | None
    run: str | None


class Memory:
    """The memory file. Nothing is created or read until it is used, so a broken memory never stops a run."""

    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = Path(db_path) if db_path is not None else memory_path()

    def record(self, changes: Sequence[Change], run: str) -> int:
        """Remember the committed writes of a run's store (one transaction). Returns how many were applied."""
        self._open()
        t = now_iso()
        applied = 0
        with connect(self.db_path) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for c in changes:
                    applied += _remember(con, c, run, t)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return applied

    def entries(self) -> list[Remembered]:
        """Every remembered decision; [] when nothing was ever remembered."""
        if not self.db_path.exists():
            return []
        self._open()
        with connect(self.db_path) as con:
            rows = con.execute("SELECT sha256, path, action, label, decided_at, source, run FROM memory").fetchall()
        return [Remembered(*r) for r in rows]

    def log(self) -> list[dict]:
        if not self.db_path.exists():
            return []
        self._open()
        with connect(self.db_path) as con:
            rows = con.execute(f"SELECT {', '.join(_LOG_KEYS)} FROM memory_log ORDER BY id").fetchall()
        return [dict(zip(_LOG_KEYS, r, strict=True)) for r in rows]

    def _open(self) -> None:
        """Create the file and its tables if needed; refuse (unchanged) a file that is not a memory."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        refuse_foreign(self.db_path, _COLUMNS, "decision memory", SCHEMA_VERSION)
        with connect(self.db_path) as con:
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'memory'").fetchone():
                return
            con.execute("BEGIN IMMEDIATE")
            try:
                if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'memory'").fetchone():
                    for statement in _SCHEMA:
                        con.execute(statement)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise


def _key(sha256: str | None, path: str) -> str:
    return sha256 if sha256 else f"path:{path}"


def _remember(con: sqlite3.Connection, c: Change, run: str, t: str) -> int:
    """Apply one change inside the caller's transaction; 0 when a conditional one no longer holds."""
    key = _key(c.sha256, c.path)
    row = con.execute("SELECT action, label FROM memory WHERE key = ?", (key,)).fetchone()
    prev = row or (None, None)
    if c.conditional and prev != (c.prev_action, c.prev_label):
        return 0  # another run decided this image since: its decision stands
    if c.action is None:
        con.execute("DELETE FROM memory WHERE key = ?", (key,))
    else:
        con.execute(
            "INSERT INTO memory(key, sha256, path, action, label, decided_at, source, run) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET path=excluded.path, action=excluded.action, label=excluded.label, "
            "decided_at=excluded.decided_at, source=excluded.source, run=excluded.run",
            (key, c.sha256, c.path, c.action, c.label, c.decided_at, c.source, run),
        )
    con.execute(
        "INSERT INTO memory_log(key, sha256, path, action, label, prev_action, prev_label, decided_at, source, run) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)",
        (key, c.sha256, c.path, c.action, c.label, prev[0], prev[1], t, c.source, run),
    )
    return 1


# ------------------------------------------------------------------------------------------- runs


def uses_memory(run_dir: Path) -> bool:
    """False when the run opted out of the workspace memory (`fit --no-memory`: `review.memory` in config.json)."""
    path = RunDir(run_dir).config
    if not path.exists():
        return True
    try:
        return config_mod.load(path).review.memory
    except UserError:  # an unreadable config: the run's other readers report it; the default stands here
        return True


def open_run_store(run_dir: Path, *, memory: Memory | None = None, remember: bool = True) -> DecisionStore:
    """The decision store of a run as the app and the CLI write through: the run's image hashes attached
    (RunDir.hashes), every write passed on to `memory` (default: the workspace's) unless `remember` is False
    or the run opted out of the memory (`uses_memory`)."""
    run = RunDir(run_dir)
    mirror = (memory or Memory()) if remember and uses_memory(run.path) else None
    return DecisionStore(run.decisions, hashes=read_hashes(run.path), mirror=mirror)


def seed_run_store(
    run_dir: Path,
    paths: Sequence[str],
    sha256s: Sequence[str | None],
    classes: Iterable[str],
    *,
    given: Sequence[str] | None = None,
    memory: Memory | None = None,
) -> int:
    """Write the remembered decisions of these images into the run's store (source "memory").

    Args:
        paths, sha256s: the run's images and their sha256 (None or "" where unknown), aligned.
        classes: the run's classes; a keep or relabel to a label outside them is not carried over.
        given: the images' given labels, aligned with `paths`; with them a remembered label becomes
            "keep" where it is the given label and "relabel" elsewhere, as a review click would.
        memory: default: the workspace's.

    Images that already have a decision in the run keep it. Returns how many decisions were written.

    Raises:
        UserError: the memory file is not a CLeaN memory (it is left unchanged); a caller that must not stop
            for it reports the message and goes on without the memory.
    """
    if len(sha256s) != len(paths) or (given is not None and len(given) != len(paths)):
        raise ValueError("paths, sha256s and given must be aligned (one entry per image)")
    entries = (memory or Memory()).entries()
    if not entries:
        return 0
    by_sha = {e.sha256: e for e in entries if e.sha256}
    by_path = _latest_by_path(entries)
    by_path_unhashed = _latest_by_path([e for e in entries if not e.sha256])
    allowed = set(classes)
    todo = []
    for i, path in enumerate(paths):
        sha = sha256s[i] or None
        match = by_sha.get(sha) if sha else by_path.get(path)
        if match is None and sha:
            match = by_path_unhashed.get(path)
        decision = _carried(match, path, sha, allowed, given[i] if given is not None else None) if match else None
        if decision is not None:
            todo.append(decision)
    if not todo:
        return 0
    store = DecisionStore(RunDir(run_dir).decisions)  # no mirror: these decisions came from the memory
    return len(store.put(todo, MEMORY_SOURCE, only_undecided=True))


def _latest_by_path(entries: Iterable[Remembered]) -> dict[str, Remembered]:
    out: dict[str, Remembered] = {}
    for e in sorted(entries, key=lambda e: e.decided_at):
        out[e.path] = e
    return out


def _carried(e: Remembered, path: str, sha256: str | None, classes: set[str], given: str | None) -> Decision | None:
    """The decision `e` becomes in a new run, or None when the new run cannot hold it."""
    if e.action in UNLABELLED_ACTIONS:
        return Decision(path, e.action, None, e.decided_at, MEMORY_SOURCE, sha256)
    if e.label not in classes:
        return None
    action = e.action if given is None else ("keep" if e.label == given else "relabel")
    return Decision(path, action, e.label, e.decided_at, MEMORY_SOURCE, sha256)
