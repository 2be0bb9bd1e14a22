"""Human review decisions: a small SQLite store in the run folder (`RUN/decisions.sqlite`).

Schema (version 2):

    decisions(path TEXT PRIMARY KEY,      -- POSIX path of the image, as in samples.csv
              action TEXT NOT NULL,        -- 'keep' | 'relabel' | 'discard' | 'skip'
              label TEXT,                  -- label to train/export with; NULL for 'discard' and 'skip'
              decided_at TEXT NOT NULL,    -- ISO-8601 UTC
              source TEXT,                 -- who decided: a browser session id, 'cli', 'memory', 'import:<file>'
              sha256 TEXT)                 -- hex sha256 of the image file's bytes; NULL where not known
    decision_log(id INTEGER PRIMARY KEY AUTOINCREMENT,
              path TEXT NOT NULL, action TEXT, label TEXT,   -- new value (action NULL = cleared/undone)
              prev_action TEXT, prev_label TEXT,             -- value it replaced
              decided_at TEXT NOT NULL, source TEXT,         -- when the write happened, and by whom
              sha256 TEXT)

`decisions` holds the current value per image (last write wins); `decision_log` is the append-only
audit trail: every write, by every tab, is recorded with time and the value it replaced, so two tabs
deciding the same image at once both appear there. Each write is one transaction in WAL mode, so a
decision is on disk before the call returns and readers never block writers.

'skip' is the "unsure" answer: it is recorded (and kept, and audited) like any other, but it is not
trusted: `load_decisions` leaves it out, so training and export treat a skipped image as undecided.

Version 1 (no sha256 column, no 'skip') is migrated in place the first time a store is opened, in one
transaction that keeps every decision and every audit row. A file at that path that is not such a store
(random bytes, a folder, another program's database, a store of a newer CLeaN) is refused with a
UserError before anything writes to it: it may hold someone's work, so it is never changed.

A store may pass every write on to a `Mirror` (the workspace memory, engine.review.memory) after its
own transaction has committed: the run's decision is saved first, and a failing mirror is reported in
`memory_error`, never lost in the run.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from engine.errors import UserError
from engine.runs.atomic import now_iso

Action = Literal["keep", "relabel", "discard", "skip"]
ACTIONS: tuple[str, ...] = ("keep", "relabel", "discard", "skip")
SKIP = "skip"  # "unsure": recorded, shown again at the end of the review queue, never trusted
UNLABELLED_ACTIONS: tuple[str, ...] = ("discard", "skip")  # actions that carry no label
SCHEMA_VERSION = 2

_DECISIONS_TABLE = """
CREATE TABLE decisions (
    path TEXT PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('keep', 'relabel', 'discard', 'skip')),
    label TEXT CHECK (action NOT IN ('discard', 'skip') OR label IS NULL),
    decided_at TEXT NOT NULL,
    source TEXT,
    sha256 TEXT
)"""
_SCHEMA = (
    _DECISIONS_TABLE,
    """CREATE TABLE decision_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        action TEXT,
        label TEXT,
        prev_action TEXT,
        prev_label TEXT,
        decided_at TEXT NOT NULL,
        source TEXT,
        sha256 TEXT
    )""",
    "CREATE INDEX decision_log_path ON decision_log(path)",
    "CREATE INDEX decisions_sha256 ON decisions(sha256)",
)
_SQLITE_HEADER = b"SQLite format 3\x00"
_COLUMNS: dict[str, frozenset[str]] = {  # the columns each table must have to be ours (version 1 or later)
    "decisions": frozenset({"path", "action", "label", "decided_at", "source"}),
    "decision_log": frozenset({"id", "path", "action", "label", "prev_action", "prev_label", "decided_at", "source"}),
}
_LOG_KEYS = ("id", "path", "action", "label", "prev_action", "prev_label", "decided_at", "source", "sha256")
_log = logging.getLogger(__name__)


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
    sha256: str | None = None


@dataclass(frozen=True)
class Change:
    """One image's write to a run store and the value it replaced: what a Mirror receives."""

    path: str
    sha256: str | None
    action: str | None  # None: the decision was cleared (undone back to "not reviewed")
    label: str | None
    prev_action: str | None
    prev_label: str | None
    decided_at: str
    source: str | None
    # A clear or an undo takes back what this run said: a mirror applies it only where it still holds
    # (prev_action, prev_label), so it never wipes a later decision that came from elsewhere.
    conditional: bool


class Mirror(Protocol):
    """Receives every committed write of a store (engine.review.memory.Memory is one)."""

    def record(self, changes: Sequence[Change], run: str) -> int: ...


_Row = tuple[str, str | None, str | None, str, str | None]  # path, action, label, decided_at, sha256


class DecisionStore:
    """Open (and create, or migrate) the decision store of one run. Cheap: open one per request.

    Args:
        db_path: the store file, normally RunDir.decisions.
        hashes: path -> sha256 of the run's images; the decisions written here carry them.
        mirror: gets every committed write (the workspace memory); its failures land in `memory_error`.
    """

    def __init__(self, db_path: Path, *, hashes: Mapping[str, str] | None = None, mirror: Mirror | None = None) -> None:
        self.db_path = Path(db_path)
        self.hashes: Mapping[str, str] = hashes or {}
        self.mirror = mirror
        self.memory_error: str | None = None  # why the last write did not reach the mirror, if it did not
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        refuse_foreign(self.db_path, _COLUMNS, "decision store", SCHEMA_VERSION)  # before WAL mode touches it
        with connect(self.db_path) as con:
            _ensure_schema(con)

    # ---------------------------------------------------------------- writes
    def decide(self, paths: Iterable[str], action: Action, label: str | None = None, source: str | None = None) -> int:
        """Record one decision for each path (batch = one transaction). Returns how many were written."""
        label = _checked(action, label)
        t = now_iso()
        return len(self._write([(p, action, label, t, self.hashes.get(p)) for p in paths], source, t, conditional=False))

    def put(self, decisions: Iterable[Decision], source: str, *, only_undecided: bool = False) -> list[Change]:
        """Write whole decisions (their action, label, decided_at and sha256) in one transaction.

        For an import and for seeding a new run from the memory. An empty `decided_at` means now. With
        `only_undecided`, images that already have a decision keep it (checked inside the transaction,
        so a reviewer deciding at the same moment is never overwritten). Returns what was written.
        """
        t = now_iso()
        rows = [(d.path, d.action, _checked(d.action, d.label), d.decided_at or t, d.sha256 or self.hashes.get(d.path))
                for d in decisions]
        return self._write(rows, source, t, conditional=False, only_undecided=only_undecided)

    def clear(self, paths: Iterable[str], source: str | None = None) -> int:
        """Remove the decisions of these images (back to 'not reviewed'), keeping the audit trail."""
        t = now_iso()
        return len(self._write([(p, None, None, t, self.hashes.get(p)) for p in paths], source, t, conditional=True))

    def restore(self, changes: Iterable[Restore], source: str | None = None) -> int:
        """Undo: put each image back to `restore_*`, but only where its current value is still
        `expected_*` (compare-and-set, in one transaction), so undoing in one tab never wipes a
        decision another tab made since. Returns how many images were put back."""
        items = list(changes)
        t = now_iso()
        with connect(self.db_path) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                todo: list[_Row] = []
                for c in items:
                    row = con.execute("SELECT action, label FROM decisions WHERE path = ?", (c.path,)).fetchone()
                    if (row or (None, None)) == (c.expected_action, c.expected_label):
                        todo.append((c.path, c.restore_action, c.restore_label, t, self.hashes.get(c.path)))
                written = _apply(con, todo, source, t, conditional=True)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._pass_on(written)
        return len(written)

    def _write(self, rows: list[_Row], source: str | None, t: str, *, conditional: bool,
               only_undecided: bool = False) -> list[Change]:
        with connect(self.db_path) as con:
            con.execute("BEGIN IMMEDIATE")  # serialises writers; last write wins per image
            try:
                if only_undecided:
                    rows = [r for r in rows if con.execute("SELECT 1 FROM decisions WHERE path = ?",
                                                           (r[0],)).fetchone() is None]
                written = _apply(con, rows, source, t, conditional=conditional)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._pass_on(written)
        return written

    def _pass_on(self, changes: list[Change]) -> None:
        """Hand committed writes to the mirror; a failure there is reported, the run's decision stands."""
        self.memory_error = None
        if self.mirror is None or not changes:
            return
        try:
            self.mirror.record(changes, run=str(self.db_path.parent.resolve()))
        except (sqlite3.Error, OSError, UserError) as e:
            self.memory_error = f"the decision is saved in the run, but the workspace memory could not record it: {e}"
            _log.warning(self.memory_error)

    # ---------------------------------------------------------------- reads
    def get(self, path: str) -> Decision | None:
        with connect(self.db_path) as con:
            row = con.execute(
                "SELECT path, action, label, decided_at, source, sha256 FROM decisions WHERE path = ?", (path,)
            ).fetchone()
        return Decision(*row) if row else None

    def all(self) -> dict[str, Decision]:
        """Every current decision, skips included (`load_decisions` gives the trusted ones)."""
        with connect(self.db_path) as con:
            rows = con.execute("SELECT path, action, label, decided_at, source, sha256 FROM decisions").fetchall()
        return {r[0]: Decision(*r) for r in rows}

    def count(self) -> int:
        with connect(self.db_path) as con:
            return int(con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def log(self, path: str | None = None) -> list[dict]:
        with connect(self.db_path) as con:
            q = f"SELECT {', '.join(_LOG_KEYS)} FROM decision_log"
            rows = con.execute(q + (" WHERE path = ?" if path else "") + " ORDER BY id", (path,) if path else ()).fetchall()
        return [dict(zip(_LOG_KEYS, r, strict=True)) for r in rows]


def _checked(action: str, label: str | None) -> str | None:
    """The label to store for `action`, or UserError for an action or label that cannot be stored."""
    if action not in ACTIONS:
        raise UserError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if action in UNLABELLED_ACTIONS:
        return None
    if not label:
        raise UserError(f"action {action!r} needs a label")
    return label


def _apply(con: sqlite3.Connection, rows: list[_Row], source: str | None, t: str, *,
           conditional: bool) -> list[Change]:
    """Write `rows` (inside the caller's transaction) and log each with the value it replaced."""
    changes = []
    for path, action, label, decided_at, sha256 in rows:
        prev = con.execute("SELECT action, label, sha256 FROM decisions WHERE path = ?", (path,)).fetchone()
        prev_action, prev_label, prev_sha = prev if prev else (None, None, None)
        sha256 = sha256 or prev_sha  # a write that does not know the hash keeps the one the row has
        if action is None:
            con.execute("DELETE FROM decisions WHERE path = ?", (path,))
        else:
            con.execute(
                "INSERT INTO decisions(path, action, label, decided_at, source, sha256) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(path) DO UPDATE SET action=excluded.action, label=excluded.label, "
                "decided_at=excluded.decided_at, source=excluded.source, sha256=excluded.sha256",
                (path, action, label, decided_at, source, sha256),
            )
        con.execute(
            "INSERT INTO decision_log(path, action, label, prev_action, prev_label, decided_at, source, sha256) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (path, action, label, prev_action, prev_label, t, source, sha256),
        )
        changes.append(Change(path, sha256, action, label, prev_action, prev_label, decided_at, source, conditional))
    return changes


# -------------------------------------------------------------------- the file: open, create, migrate, refuse


@contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (callers BEGIN IMMEDIATE), WAL, synchronous=FULL."""
    con = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # a decision once made is never lost
        con.execute("PRAGMA busy_timeout=30000")
        yield con
    finally:
        con.close()


def _ensure_schema(con: sqlite3.Connection) -> None:
    """Create the tables in a new store, or migrate a version-1 store; nothing to do for a current one."""
    if _version(con) == SCHEMA_VERSION:
        return
    con.execute("BEGIN IMMEDIATE")  # two processes opening an old store at once: one migrates, one waits
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "decisions" not in tables:
            for statement in _SCHEMA:
                con.execute(statement)
        elif _version(con) < SCHEMA_VERSION:
            _migrate_v1(con)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _migrate_v1(con: sqlite3.Connection) -> None:
    """Version 1 -> 2 inside the caller's transaction: a sha256 column, and 'skip' in the CHECK constraint.

    SQLite cannot change a CHECK constraint in place, so `decisions` is rebuilt (rows copied as they are);
    `decision_log` only gains a column, so its ids and rows stay exactly as they were.
    """
    placeholders = ", ".join("?" * len(ACTIONS))
    odd = con.execute(f"SELECT path, action FROM decisions WHERE action NOT IN ({placeholders}) LIMIT 1",
                      tuple(ACTIONS)).fetchone()
    if odd is not None:  # an older or hand-edited store: named, and left as it is (the caller rolls back)
        raise UserError(f"review decision for {odd[0]} has unknown action {odd[1]!r} "
                        f"(one of {', '.join(ACTIONS)} expected); correct or delete that row of the store")
    con.execute(_DECISIONS_TABLE.replace("CREATE TABLE decisions", "CREATE TABLE decisions_v2"))
    con.execute("INSERT INTO decisions_v2(path, action, label, decided_at, source) "
                "SELECT path, action, CASE WHEN action = 'discard' THEN NULL ELSE label END, decided_at, source "
                "FROM decisions")
    con.execute("DROP TABLE decisions")
    con.execute("ALTER TABLE decisions_v2 RENAME TO decisions")
    con.execute("CREATE INDEX decisions_sha256 ON decisions(sha256)")
    if "decision_log" in {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
        con.execute("ALTER TABLE decision_log ADD COLUMN sha256 TEXT")
    else:
        con.execute(_SCHEMA[1])
        con.execute(_SCHEMA[2])


def _version(con: sqlite3.Connection) -> int:
    return int(con.execute("PRAGMA user_version").fetchone()[0])


def refuse_foreign(db_path: Path, columns: Mapping[str, frozenset[str]], what: str, version: int) -> None:
    """Raise a UserError unless `db_path` is absent, empty, or a store with these tables (the first one named
    is the store's main table) whose schema version is at most `version`. Only reads the file."""
    if not db_path.exists():
        return
    problem, found = _foreign_reason(db_path, columns)
    if problem:
        raise UserError(f"{db_path} is not a CLeaN {what} ({problem}); move it away")
    if found > version:
        raise UserError(f"{db_path} was written by a newer CLeaN (schema version {found}; this one reads up to "
                        f"{version}): open it with that version")


def _foreign_reason(db_path: Path, columns: Mapping[str, frozenset[str]]) -> tuple[str | None, int]:
    """(why the existing `db_path` is not one of our stores or None, its schema version)."""
    if not db_path.is_file():
        return ("it is a folder" if db_path.is_dir() else "it is not a regular file"), 0
    with db_path.open("rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    if not head:
        return None, 0  # an empty file is an empty database to SQLite: safe to create the tables in
    if head != _SQLITE_HEADER:
        return "not an SQLite database", 0
    try:
        tables, found = _table_columns(db_path)
    except sqlite3.DatabaseError as e:
        if e.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):  # ours, in use: not a reason to refuse
            raise
        return f"unreadable: {e}", 0
    main = next(iter(columns))
    if main not in tables and tables:
        return f"it holds other tables: {', '.join(sorted(tables))}", found
    for table, expected in columns.items():
        missing = expected - tables.get(table, expected)
        if missing:
            return f"its {table} table lacks the columns {', '.join(sorted(missing))}", found
    return None, found


def _table_columns(db_path: Path) -> tuple[dict[str, set[str]], int]:
    """The columns of each user table and the schema version, read with plain SELECTs (no schema change)."""
    con = sqlite3.connect(db_path, timeout=30.0)
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        tables = {n: {r[1] for r in con.execute("SELECT * FROM pragma_table_info(?)", (n,))} for n in names}
        return tables, _version(con)
    finally:
        con.close()


def load_decisions(db_path: Path, *, include_skipped: bool = False) -> dict[str, Decision]:
    """The current decisions of a run that training and export act on, or {} when nobody has reviewed
    anything yet. Skips ("unsure") are left out unless `include_skipped`: consumers treat them as undecided."""
    if not Path(db_path).exists():
        return {}
    decisions = DecisionStore(db_path).all()
    return decisions if include_skipped else {p: d for p, d in decisions.items() if d.action != SKIP}


def finetune_waits(require_decisions: bool, db_path: Path) -> str | None:
    """Why phase (b) does not run yet (config finetune.require_decisions, and no decision in the store), or
    None when it may run. Skips are no decisions."""
    if not require_decisions or load_decisions(db_path):
        return None
    return ("fine-tuning waits for review decisions: without them it was measured to make the labels worse on "
            "real label noise (README, phase (b)). Review some flagged images first, or set "
            "finetune.require_decisions=false to run it anyway")
