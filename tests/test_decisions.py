"""The review decision store: validation, undo, and many writers at once (processes, like several tabs/servers)."""

from __future__ import annotations

import multiprocessing as mp
import re
import sqlite3
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.review.decisions import DecisionStore, load_decisions

PATHS = [f"class_{i % 5}/img_{i:04d}.png" for i in range(60)]
LABELS = ("cat", "dog", "fox")


def writer(db: str, worker: int, rounds: int, barrier) -> int:  # noqa: ANN001 (multiprocessing barrier)
    """Write `rounds` decisions on overlapping images, alternating single writes and batches."""
    store = DecisionStore(Path(db))
    barrier.wait()  # start together so the writes really interleave
    written = 0
    for r in range(rounds):
        start = (worker * 7 + r * 3) % len(PATHS)
        if r % 4 == 3:  # a batch of 5 images in one transaction
            paths = [PATHS[(start + k) % len(PATHS)] for k in range(5)]
            written += store.decide(paths, "discard", source=f"w{worker}")
        else:
            label = LABELS[(worker + r) % len(LABELS)]
            action = "keep" if r % 2 else "relabel"
            written += store.decide([PATHS[start]], action, label, source=f"w{worker}")
    return written


@pytest.mark.slow
def test_concurrent_writers_lose_nothing_and_last_write_wins(tmp_path):
    db = tmp_path / "decisions.sqlite"
    DecisionStore(db)  # schema created once, before the race
    workers, rounds = 4, 60
    ctx = mp.get_context("spawn")  # fresh interpreters, as separate server processes would be
    barrier = ctx.Manager().Barrier(workers)
    with ctx.Pool(workers) as pool:
        counts = pool.starmap(writer, [(str(db), w, rounds, barrier) for w in range(workers)])
    store = DecisionStore(db)
    log = store.log()
    assert len(log) == sum(counts)  # every write is in the audit trail, none lost
    assert sorted({row["source"] for row in log}) == ["w0", "w1", "w2", "w3"]
    current = store.all()
    touched = {row["path"] for row in log}
    assert set(current) == touched  # every image anyone decided has a decision
    by_path: dict[str, list[dict]] = {}
    for row in log:  # log ids are the commit order
        by_path.setdefault(row["path"], []).append(row)
    for path, rows in by_path.items():
        last = rows[-1]
        assert (current[path].action, current[path].label) == (last["action"], last["label"])  # last write wins
        previous = (None, None)
        for row in rows:  # each logged change replaced exactly the value before it: no lost update
            assert (row["prev_action"], row["prev_label"]) == previous
            previous = (row["action"], row["label"])


def test_decide_validates_and_a_failed_batch_writes_nothing(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite")
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        store.decide(["a.png"], "delete")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a label"):
        store.decide(["a.png"], "relabel", None)
    assert store.count() == 0 and store.log() == []
    assert store.decide(["a.png", "b.png"], "discard", "ignored", source="t") == 2
    assert store.get("a.png").label is None  # discard carries no label


def test_restore_and_clear_keep_the_audit_trail(tmp_path):
    from engine.review.decisions import Restore

    store = DecisionStore(tmp_path / "d.sqlite")
    store.decide(["a.png"], "keep", "cat", source="tab1")
    store.decide(["a.png"], "relabel", "dog", source="tab2")
    store.decide(["b.png"], "discard", source="tab1")
    # tab1 undoes both of its actions: b.png goes back; a.png was changed by tab2 since, so it stays
    put_back = store.restore([Restore("b.png", "discard", None, None, None),
                              Restore("a.png", "keep", "cat", None, None)], source="tab1")
    assert put_back == 1 and store.get("b.png") is None
    assert store.get("a.png").label == "dog"
    store.clear(["a.png"], source="tab2")
    assert store.count() == 0
    assert [(r["action"], r["prev_action"]) for r in store.log("a.png")] == [("keep", None), ("relabel", "keep"),
                                                                              (None, "relabel")]
    assert [(r["action"], r["prev_action"]) for r in store.log("b.png")] == [("discard", None), (None, "discard")]
    assert load_decisions(tmp_path / "missing.sqlite") == {}


def test_decisions_are_on_disk_when_decide_returns(tmp_path):
    DecisionStore(tmp_path / "d.sqlite").decide(["x.png"], "relabel", "fox", source="t")
    fresh = DecisionStore(tmp_path / "d.sqlite")  # another process or a restarted server
    assert (fresh.get("x.png").action, fresh.get("x.png").label) == ("relabel", "fox")


def _foreign_table(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE decisions (path TEXT, verdict TEXT)")
    con.execute("INSERT INTO decisions VALUES ('a.png', 'ok')")
    con.commit()
    con.close()


def _other_tables(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda db: db.write_bytes(bytes(range(256)) * 8), "not an SQLite database"),
    (lambda db: db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000), "unreadable: "),
    (_foreign_table, "its decisions table lacks the columns action, decided_at, label, source"),
    (_other_tables, "it holds other tables: notes"),
])
def test_a_foreign_file_is_refused_by_name_and_never_changed(tmp_path, make, reason):
    db = tmp_path / "run" / "decisions.sqlite"
    db.parent.mkdir()
    make(db)
    before = db.read_bytes()
    message = f"{db} is not a CLeaN decision store ({reason}"
    with pytest.raises(UserError, match=re.escape(message) + r".*\); move it away$"):
        DecisionStore(db)
    with pytest.raises(UserError, match=re.escape(message)):
        load_decisions(db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["decisions.sqlite"]  # no -wal/-shm/-journal left


def test_a_folder_in_place_of_the_store_is_refused(tmp_path):
    db = tmp_path / "decisions.sqlite"
    (db / "inner").mkdir(parents=True)
    with pytest.raises(UserError, match=re.escape(f"{db} is not a CLeaN decision store (it is a folder); move it away")):
        load_decisions(db)
    assert [p.name for p in db.iterdir()] == ["inner"]


def test_an_empty_file_and_an_existing_store_open_normally(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    DecisionStore(empty).decide(["a.png"], "keep", "cat")
    assert load_decisions(empty)["a.png"].label == "cat"
    assert DecisionStore(empty).count() == 1  # our own store, reopened: accepted


# ----------------------------------------------------------------------------- schema version 2: skip, sha256

# The version-1 schema exactly as CLeaN wrote it before sha256 and 'skip' existed.
V1_SCHEMA = """
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
SHA = "ab" * 32


def _v1_store(db: Path) -> None:
    """A version-1 store as the old code left it: WAL mode, three decisions, an audit trail with a replacement."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(V1_SCHEMA)
    log = [("a.png", "keep", "cat", None, None, "2026-01-01T00:00:00.000+00:00", "tab1"),
           ("a.png", "relabel", "dog", "keep", "cat", "2026-01-01T00:01:00.000+00:00", "tab2"),
           ("b.png", "discard", None, None, None, "2026-01-01T00:02:00.000+00:00", "cli"),
           ("c.png", "keep", "fox", None, None, "2026-01-01T00:03:00.000+00:00", None)]
    con.executemany("INSERT INTO decision_log(path, action, label, prev_action, prev_label, decided_at, source) "
                    "VALUES (?,?,?,?,?,?,?)", log)
    con.executemany("INSERT INTO decisions VALUES (?,?,?,?,?)",
                    [("a.png", "relabel", "dog", "2026-01-01T00:01:00.000+00:00", "tab2"),
                     ("b.png", "discard", None, "2026-01-01T00:02:00.000+00:00", "cli"),
                     ("c.png", "keep", "fox", "2026-01-01T00:03:00.000+00:00", None)])
    con.close()


def test_a_version_1_store_is_migrated_keeping_every_decision_and_the_audit_log(tmp_path):
    db = tmp_path / "decisions.sqlite"
    _v1_store(db)
    store = DecisionStore(db)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = {r[1] for r in con.execute("SELECT * FROM pragma_table_info('decisions')")}
    assert "sha256" in columns
    now = store.all()
    assert {p: (d.action, d.label, d.decided_at, d.source, d.sha256) for p, d in now.items()} == {
        "a.png": ("relabel", "dog", "2026-01-01T00:01:00.000+00:00", "tab2", None),
        "b.png": ("discard", None, "2026-01-01T00:02:00.000+00:00", "cli", None),
        "c.png": ("keep", "fox", "2026-01-01T00:03:00.000+00:00", None, None),
    }
    log = store.log()
    assert [(r["id"], r["path"], r["action"], r["prev_action"], r["source"]) for r in log] == [
        (1, "a.png", "keep", None, "tab1"), (2, "a.png", "relabel", "keep", "tab2"),
        (3, "b.png", "discard", None, "cli"), (4, "c.png", "keep", None, None)]
    # the migrated store takes the new answer and the hash, and its log goes on from the old ids
    DecisionStore(db, hashes={"c.png": SHA}).decide(["c.png"], "skip", source="tab3")
    assert (store.get("c.png").action, store.get("c.png").label, store.get("c.png").sha256) == ("skip", None, SHA)
    assert store.log("c.png")[-1] | {"decided_at": ""} == {
        "id": 5, "path": "c.png", "action": "skip", "label": None, "prev_action": "keep", "prev_label": "fox",
        "decided_at": "", "source": "tab3", "sha256": SHA}
    DecisionStore(db)  # opening a migrated store again changes nothing
    assert len(DecisionStore(db).log()) == 5 and DecisionStore(db).count() == 3


def test_a_store_of_a_newer_schema_is_refused_unchanged(tmp_path):
    db = tmp_path / "decisions.sqlite"
    DecisionStore(db).decide(["a.png"], "keep", "cat")
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 3")
    con.close()  # the last connection: the WAL is checkpointed into the main file and removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.sqlite"]
    before = db.read_bytes()
    with pytest.raises(UserError, match=re.escape(f"{db} was written by a newer CLeaN (schema version 3; this one "
                                                  "reads up to 2): open it with that version")):
        DecisionStore(db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.sqlite"]


def test_skip_is_recorded_without_a_label_and_left_out_of_the_trusted_decisions(tmp_path):
    db = tmp_path / "d.sqlite"
    store = DecisionStore(db)
    assert store.decide(["a.png", "b.png"], "skip", "cat", source="t") == 2
    store.decide(["c.png"], "relabel", "dog", source="t")
    assert (store.get("a.png").action, store.get("a.png").label) == ("skip", None)
    assert sorted(load_decisions(db)) == ["c.png"]  # training and export treat skips as undecided
    assert sorted(load_decisions(db, include_skipped=True)) == ["a.png", "b.png", "c.png"]
    assert [r["action"] for r in store.log("a.png")] == ["skip"]  # audited like any answer
    with sqlite3.connect(db) as con, pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        con.execute("UPDATE decisions SET label = 'cat' WHERE path = 'a.png'")  # a skip never carries a label


def test_decisions_carry_the_sha256_of_their_image_and_a_clear_logs_it(tmp_path):
    store = DecisionStore(tmp_path / "d.sqlite", hashes={"a.png": SHA})
    store.decide(["a.png", "b.png"], "keep", "cat", source="t")
    assert store.get("a.png").sha256 == SHA and store.get("b.png").sha256 is None
    DecisionStore(tmp_path / "d.sqlite").decide(["a.png"], "relabel", "dog")  # a writer without the hashes
    assert store.get("a.png").sha256 == SHA  # ... keeps the hash the row has
    DecisionStore(tmp_path / "d.sqlite").clear(["a.png"])
    assert [r["sha256"] for r in store.log("a.png")] == [SHA, SHA, SHA]


def test_put_writes_whole_decisions_in_one_transaction_and_can_spare_decided_images(tmp_path):
    from engine.review.decisions import Decision

    store = DecisionStore(tmp_path / "d.sqlite")
    store.decide(["a.png"], "discard", source="tab")
    with pytest.raises(ValueError, match="action 'relabel' needs a label"):
        store.put([Decision("b.png", "keep", "cat", ""), Decision("c.png", "relabel", None, "")], "import:x.csv")
    assert store.count() == 1 and len(store.log()) == 1  # nothing of the refused batch
    written = store.put([Decision("a.png", "keep", "cat", "2025-05-05T00:00:00.000+00:00", sha256=SHA),
                         Decision("b.png", "skip", "ignored", "")], "memory", only_undecided=True)
    assert [c.path for c in written] == ["b.png"]  # a.png keeps the reviewer's discard
    assert store.get("a.png").action == "discard"
    assert (store.get("b.png").source, store.get("b.png").label) == ("memory", None)
    store.put([Decision("a.png", "keep", "cat", "2025-05-05T00:00:00.000+00:00", sha256=SHA)], "import:x.csv")
    a = store.get("a.png")
    assert (a.action, a.decided_at, a.source, a.sha256) == ("keep", "2025-05-05T00:00:00.000+00:00", "import:x.csv",
                                                            SHA)
    assert (store.log("a.png")[-1]["prev_action"], store.log("a.png")[-1]["source"]) == ("discard", "import:x.csv")


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list = []
        self.fail = fail

    def record(self, changes, run):  # noqa: ANN001, ANN201 (the Mirror protocol)
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        self.calls.append((run, [(c.path, c.action, c.prev_action, c.conditional) for c in changes]))
        return len(changes)


def test_every_committed_write_reaches_the_mirror_and_a_failing_mirror_loses_nothing(tmp_path):
    from engine.review.decisions import Restore

    mirror = _Recorder()
    store = DecisionStore(tmp_path / "run" / "d.sqlite", mirror=mirror)
    store.decide(["a.png"], "keep", "cat", source="t")
    store.restore([Restore("a.png", "keep", "cat", None, None)], source="t")
    store.restore([Restore("a.png", "keep", "cat", None, None)], source="t")  # nothing left to undo: nothing sent
    run = str((tmp_path / "run").resolve())
    assert mirror.calls == [(run, [("a.png", "keep", None, False)]), (run, [("a.png", None, "keep", True)])]
    broken = DecisionStore(tmp_path / "run" / "d.sqlite", mirror=_Recorder(fail=True))
    assert broken.decide(["b.png"], "discard", source="t") == 1
    assert broken.get("b.png").action == "discard"  # the run's decision stands
    assert broken.memory_error == ("the decision is saved in the run, but the workspace memory could not record it: "
                                   "disk I/O error")
