"""Human review decisions: a small SQLite store in the run folder (`RUN/decisions.sqlite`).

Schema (version 1):

    decisions(path TEXT PRIMARY KEY,      -- POSIX path of the image, as in samples.csv
              action TEXT NOT NULL,        -- 'keep' | 'relabel' | 'discard'
              label TEXT,                  -- label to train/export with; NULL for 'discard'
              decided_at TEXT NOT NULL,    -- ISO-8601 UTC
              source TEXT)                 -- who decided: a browser session id, 'cli', ...
    decision_log(id INTEGER PRIMARY KEY AUTOINCREMENT,
              path TEXT NOT NULL, action TEXT, label TEXT,   -- new value (action NULL = cleared/undone)
              prev_action TEXT, prev_label TEXT,             -- value it replaced
              decided_at TEXT NOT NULL, source TEXT)

`decisions` holds the current value per image (last write wins); `decision_log` is the append-only
audit trail: every write, by every tab, is recorded with time and the value it replaced, so two tabs
deciding the same image at once both appear there. Each write is one transaction in WAL mode, so a
decision is on disk before the call returns and readers never block writers.

A file at that path that is not such a store (random bytes, a folder, another program's database) is
refused with a UserError before anything writes to it: it may hold someone's work, so it is never changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import UserError
from engine.runs.atomic import now_iso

Action = Literal["keep", "relabel", "discard"]
ACTIONS: tuple[str, ...] = ("keep", "relabel", "discard")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    path TEXT PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('keep', 'relabel', 'discard')),
    label TEXT,
    decided_at TEXT NOT NULL,
    source TEXT
);
CREATE TABLE IF NOT EXISTS decision_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    action TEXT,
    label TEXT,
    prev_action TEXT,
    prev_label TEXT,
    decided_at TEXT NOT NULL,
    source TEXT
);
CREATE INDEX IF NOT EXISTS decision_log_path ON decision_log(path);
PRAGMA user_version = 1;
"""
_SQLITE_HEADER = b"SQLite format 3\x00"
_COLUMNS: dict[str, frozenset[str]] = {  # the columns each table of _SCHEMA must have
    "decisions": frozenset({"path", "action", "label", "decided_at", "source"}),
    "decision_log": frozenset({"id", "path", "action", "label", "prev_action", "prev_label", "decided_at", "source"}),
}


@dataclass(frozen=True)
class Restore:
    """One image of an undo: the value this tab wrote (expected now) and the value it replaced."""

    path: str
    expected_action: str | None
    expected_label: str | None
    restore_action: str | None  # None: back to "not reviewed"
    restore_label: str | None


@dataclass(frozen=True)
class Decision:
    path: str
    action: str
    label: str | None
    decided_at: str
    source: str | None = None


class DecisionStore:
    """Open (and create) the decision store of one run. Cheap: open one per request."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_foreign(self.db_path)  # before WAL mode or CREATE TABLE touch the file
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # a decision once made is never lost
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    # ---------------------------------------------------------------- writes
    def decide(self, paths: Iterable[str], action: Action, label: str | None = None, source: str | None = None) -> int:
        """Record one decision for each path (batch = one transaction). Returns how many were written."""
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if action in ("keep", "relabel") and not label:
            raise UserError(f"action {action!r} needs a label")
        if action == "discard":
            label = None
        return self._write([(p, action, label) for p in paths], source)

    def clear(self, paths: Iterable[str], source: str | None = None) -> int:
        """Remove the decisions of these images (back to 'not reviewed'), keeping the audit trail."""
        return self._write([(p, None, None) for p in paths], source)

    def restore(self, changes: Iterable[Restore], source: str | None = None) -> int:
        """Undo: put each image back to `restore_*`, but only where its current value is still
        `expected_*` (compare-and-set, in one transaction), so undoing in one tab never wipes a
        decision another tab made since. Returns how many images were put back."""
        items = list(changes)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                todo = []
                for c in items:
                    row = con.execute("SELECT action, label FROM decisions WHERE path = ?", (c.path,)).fetchone()
                    if (row or (None, None)) == (c.expected_action, c.expected_label):
                        todo.append((c.path, c.restore_action, c.restore_label))
                self._apply(con, todo, source, now_iso())
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(todo)

    def _write(self, items: list[tuple[str, str | None, str | None]], source: str | None) -> int:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # serialises writers; last write wins per image
            try:
                self._apply(con, items, source, now_iso())
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(items)

    @staticmethod
    def _apply(con: sqlite3.Connection, items: list[tuple[str, str | None, str | None]], source: str | None,
               t: str) -> None:
        for path, action, label in items:
            prev = con.execute("SELECT action, label FROM decisions WHERE path = ?", (path,)).fetchone()
            prev_action, prev_label = prev if prev else (None, None)
            if action is None:
                con.execute("DELETE FROM decisions WHERE path = ?", (path,))
            else:
                con.execute(
                    "INSERT INTO decisions(path, action, label, decided_at, source) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(path) DO UPDATE SET action=excluded.action, label=excluded.label, "
                    "decided_at=excluded.decided_at, source=excluded.source",
                    (path, action, label, t, source),
                )
            con.execute(
                "INSERT INTO decision_log(path, action, label, prev_action, prev_label, decided_at, source) "
                "VALUES (?,?,?,?,?,?,?)",
                (path, action, label, prev_action, prev_label, t, source),
            )

    # ---------------------------------------------------------------- reads
    def get(self, path: str) -> Decision | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT path, action, label, decided_at, source FROM decisions WHERE path = ?", (path,)
            ).fetchone()
        return Decision(*row) if row else None

    def all(self) -> dict[str, Decision]:
        with self._connect() as con:
            rows = con.execute("SELECT path, action, label, decided_at, source FROM decisions").fetchall()
        return {r[0]: Decision(*r) for r in rows}

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def log(self, path: str | None = None) -> list[dict]:
        with self._connect() as con:
            q = "SELECT id, path, action, label, prev_action, prev_label, decided_at, source FROM decision_log"
            rows = con.execute(q + (" WHERE path = ?" if path else "") + " ORDER BY id", (path,) if path else ()).fetchall()
        keys = ("id", "path", "action", "label", "prev_action", "prev_label", "decided_at", "source")
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _refuse_foreign(db_path: Path) -> None:
    """Raise a UserError unless `db_path` is absent, empty, or a decision store with the expected tables."""
    if not db_path.exists():
        return
    problem = _foreign_reason(db_path)
    if problem:
        raise UserError(f"{db_path} is not a CLeaN decision store ({problem}); move it away")


def _foreign_reason(db_path: Path) -> str | None:
    """Why the existing `db_path` is not one of our stores, or None. Only reads the file."""
    if not db_path.is_file():
        return "it is a folder" if db_path.is_dir() else "it is not a regular file"
    with db_path.open("rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    if not head:
        return None  # an empty file is an empty database to SQLite: safe to create the tables in
    if head != _SQLITE_HEADER:
        return "not an SQLite database"
    try:
        tables = _table_columns(db_path)
    except sqlite3.DatabaseError as e:
        if e.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):  # ours, in use: not a reason to refuse
            raise
        return f"unreadable: {e}"
    if "decisions" not in tables and tables:
        return f"it holds other tables: {', '.join(sorted(tables))}"
    for table, expected in _COLUMNS.items():
        missing = expected - tables.get(table, expected)
        if missing:
            return f"its {table} table lacks the columns {', '.join(sorted(missing))}"
    return None


def _table_columns(db_path: Path) -> dict[str, set[str]]:
    """The columns of each user table, read with plain SELECTs (no PRAGMA that writes, no schema change)."""
    con = sqlite3.connect(db_path, timeout=30.0)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {n: {r[1] for r in con.execute("SELECT * FROM pragma_table_info(?)", (n,))} for n in names}
    finally:
        con.close()


def load_decisions(db_path: Path) -> dict[str, Decision]:
    """All current decisions of a run, or {} when nobody has reviewed anything yet."""
    if not Path(db_path).exists():
        return {}
    return DecisionStore(db_path).all()
