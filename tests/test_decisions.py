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
