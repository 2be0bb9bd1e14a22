"""`decisions export` / `decisions import`: the CSV, its safety, matching by sha256 then path, all-or-nothing."""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

import pytest
from fixtures_review import make_run, sha

from engine.cli import main
from engine.review.decisions import DecisionStore
from engine.review.hashes import image_hashes, read_hashes
from engine.review.memory import Memory, open_run_store
from engine.review.transfer import DECISION_COLUMNS, defuse_cell, restore_cell

IMAGES = [("cat/1.png", "cat", "k1"), ("cat/2.png", "cat", "k2"), ("dog/3.png", "dog", "k3"),
          ("dog/4.png", "dog", "k4"), ("=cmd/5.png", "=cmd", "k5")]
CLASSES = ("cat", "dog", "=cmd")
HEADER = ",".join(DECISION_COLUMNS)


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "workspace"
    monkeypatch.setenv("CLEAN_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def run(tmp_path: Path):  # noqa: ANN201
    run = make_run(tmp_path, IMAGES, classes=CLASSES)
    image_hashes(run.path, tmp_path / "run-data", [p for p, _, _ in IMAGES])
    store = open_run_store(run.path)
    store.decide(["cat/1.png"], "relabel", "dog", source="=tab")
    store.decide(["dog/3.png"], "skip", source="tab")
    store.decide(["dog/4.png"], "discard", source="tab")
    store.decide(["=cmd/5.png"], "keep", "=cmd", source="tab")
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _state(db: Path) -> tuple[dict, list]:
    store = DecisionStore(db)
    return store.all(), store.log()


@pytest.mark.parametrize("value", ["=SUM(A1)", "+1x", "-x", "@x", "\tx", "\rx", "'", "'=x", "''=x", "'abc", "-1",
                                   "+2.5", "plain", "", "café 猫"])
def test_defused_cells_come_back_exactly(value):
    cell = defuse_cell(value)
    assert restore_cell(cell) == value
    assert not cell.startswith(("=", "+", "@", "\t", "\r")) or cell in ("+2.5",)
    assert restore_cell("'x") == "'x"  # a quote someone typed (not ours) stays


def test_export_writes_every_decision_with_its_sha256_and_safe_cells(run, tmp_path, capsys):
    out = tmp_path / "out" / "decisions.csv"
    assert main(["decisions", "export", str(run.path), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 4 decisions to {out}\n"
    assert out.read_text(encoding="utf-8").splitlines()[0] == HEADER
    rows = {r["path"]: r for r in _rows(out)}
    assert list(rows) == ["'=cmd/5.png", "cat/1.png", "dog/3.png", "dog/4.png"]
    assert [(r["action"], r["label"], r["sha256"]) for r in rows.values()] == [
        ("keep", "'=cmd", sha("k5")), ("relabel", "dog", sha("k1")), ("skip", "", sha("k3")),
        ("discard", "", sha("k4"))]
    assert rows["cat/1.png"]["source"] == "'=tab"
    assert rows["cat/1.png"]["decided_at"] == DecisionStore(run.decisions).get("cat/1.png").decided_at
    assert [p.name for p in out.parent.iterdir()] == ["decisions.csv"]  # no temp file left


def test_export_never_replaces_a_file_it_did_not_write(run, tmp_path, capsys):
    out = tmp_path / "decisions.csv"
    assert main(["decisions", "export", str(run.path), "--out", str(out)]) == 0
    assert main(["decisions", "export", str(run.path), "--out", str(out)]) == 2
    assert "already exists; choose a new file, or pass --overwrite" in capsys.readouterr().err
    DecisionStore(run.decisions).decide(["cat/2.png"], "discard", source="t")
    assert main(["decisions", "export", str(run.path), "--out", str(out), "--overwrite"]) == 0  # its own export
    assert len(_rows(out)) == 5
    notes = _write(tmp_path / "notes.csv", ["path,label", "a,b"])
    assert main(["decisions", "export", str(run.path), "--out", str(notes), "--overwrite"]) == 2
    assert "is not a decisions export written by CLeaN" in capsys.readouterr().err
    assert notes.read_text() == "path,label\na,b\n"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(out)
    for target in (fifo, link, tmp_path):
        assert main(["decisions", "export", str(run.path), "--out", str(target), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("is not a regular file (a link, device or pipe)") == 2 and "is a folder" in err
    assert fifo.is_fifo() and link.is_symlink() and len(_rows(out)) == 5
    inside = run.path / "decisions.csv"
    assert main(["decisions", "export", str(run.path), "--out", str(inside)]) == 2
    assert "is inside the run folder" in capsys.readouterr().err and not inside.exists()
    assert main(["decisions", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_a_round_trip_into_a_run_of_renamed_files_gives_the_same_decisions(run, tmp_path, capsys):
    out = tmp_path / "decisions.csv"
    assert main(["decisions", "export", str(run.path), "--out", str(out)]) == 0
    capsys.readouterr()
    renamed = [(f"new/{Path(p).name}", g, k) for p, g, k in IMAGES]
    other = make_run(tmp_path, renamed, classes=CLASSES, name="other")  # no hash cache: computed from its data
    assert main(["decisions", "import", str(other.path), str(out), "--no-memory"]) == 0
    assert capsys.readouterr().out == f"imported 4 decisions into {other.path}\n"
    assert read_hashes(other.path)["new/1.png"] == sha("k1")  # hashed once, cached in the run
    before, after = DecisionStore(run.decisions).all(), DecisionStore(other.decisions).all()
    assert {d.sha256: (d.action, d.label, d.decided_at) for d in after.values()} == {
        d.sha256: (d.action, d.label, d.decided_at) for d in before.values()}
    assert {d.source for d in after.values()} == {"import:decisions.csv"}
    assert str(other.path.resolve()) not in {e.run for e in Memory().entries()}  # --no-memory
    assert after["new/5.png"].label == "=cmd"  # the formula quote taken off again
    assert main(["decisions", "import", str(other.path), str(out)]) == 0  # again: nothing to change
    assert capsys.readouterr().out == f"imported 0 decisions into {other.path}; 4 already as in the file\n"


def test_an_import_over_existing_decisions_keeps_the_old_values_in_the_audit_log(run, tmp_path, capsys):
    csv_file = _write(tmp_path / "mine.csv", [
        HEADER,
        f"cat/1.png,{sha('k1')},keep,,2026-03-01T12:00:00Z,reviewer",  # was relabel dog; empty keep label: cat
        "dog/4.png,,relabel,cat,,",  # was discard; matched by path
        f"anything.png,{sha('k3')},discard,,,",  # was skip; matched by content, whatever the path says
    ])
    assert main(["decisions", "import", str(run.path), str(csv_file)]) == 0
    assert "imported 3 decisions" in capsys.readouterr().out
    store = DecisionStore(run.decisions)
    assert (store.get("cat/1.png").action, store.get("cat/1.png").label) == ("keep", "cat")
    assert store.get("cat/1.png").decided_at == "2026-03-01T12:00:00.000+00:00"
    assert (store.get("dog/4.png").action, store.get("dog/4.png").label) == ("relabel", "cat")
    assert store.get("dog/3.png").action == "discard"
    last = {p: store.log(p)[-1] for p in ("cat/1.png", "dog/4.png", "dog/3.png")}
    assert {p: (r["prev_action"], r["prev_label"], r["source"]) for p, r in last.items()} == {
        "cat/1.png": ("relabel", "dog", "import:mine.csv"), "dog/4.png": ("discard", None, "import:mine.csv"),
        "dog/3.png": ("skip", None, "import:mine.csv")}
    assert {e.path: e.action for e in Memory().entries()}["dog/4.png"] == "relabel"  # remembered too


def test_every_bad_row_is_refused_with_its_line_and_nothing_is_written(run, tmp_path, capsys):
    before = _state(run.decisions)
    bad = _write(tmp_path / "bad.csv", [
        HEADER,
        "cat/2.png,,relabel,wolf,,",
        "cat/2.png,,keep,cat,,",
        "",
        "cat/9.png,,keep,cat,,",
        "dog/3.png,,delete,,,",
        f"dog/4.png,{sha('elsewhere')},discard,,,",
        "cat/2.png,xyz,keep,cat,,",
        "cat/2.png,,keep,cat,yesterday,",
        "cat/2.png,,discard,,,",
        "cat/1.png,,relabel,,,",
    ])
    assert main(["decisions", "import", str(run.path), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: bad.csv: 8 rows refused, nothing imported: line 2: label 'wolf' is not a class of this run; "
        "line 5: no image of this run has the path 'cat/9.png'; "
        "line 6: unknown action 'delete' (use keep, relabel, discard or skip); "
        "line 7: 'dog/4.png' now holds other content than the decided image (its sha256 differs); empty the sha256 "
        "cell to match by path alone; "
        "line 8: sha256 'xyz' is not 64 hex digits; "
        "line 9: decided_at 'yesterday' is not an ISO-8601 time; "
        "lines 3 and 10 give 'cat/2.png' different decisions; "
        "line 11: relabel needs a label\n")
    assert _state(run.decisions) == before


def test_a_file_that_is_no_decisions_csv_is_one_clear_error(run, tmp_path, capsys):
    cases = {
        "missing.csv": None,
        "columns.csv": "path,verdict\ncat/1.png,ok\n",
        "latin1.csv": "path,action\ncaf\xe9.png,keep\n".encode("latin-1"),
    }
    for name, body in cases.items():
        if isinstance(body, str):
            (tmp_path / name).write_text(body)
        elif body is not None:
            (tmp_path / name).write_bytes(body)
    os.mkfifo(tmp_path / "pipe.csv")
    before = _state(run.decisions)
    messages = []
    for name in (*cases, "pipe.csv"):
        assert main(["decisions", "import", str(run.path), str(tmp_path / name)]) == 2
        messages.append(capsys.readouterr().err.strip())
    assert messages == [
        f"error: {tmp_path / 'missing.csv'} does not exist",
        f"error: {tmp_path / 'columns.csv'} lacks the columns action: a decisions file has the columns {HEADER}",
        f"error: {tmp_path / 'latin1.csv'} is not UTF-8 text; save it as UTF-8 CSV",
        f"error: {tmp_path / 'pipe.csv'} is not a regular file; give a CSV file with {HEADER}",
    ]
    unfitted = tmp_path / "unfitted"
    unfitted.mkdir()
    ok = _write(tmp_path / "ok.csv", [HEADER, "cat/1.png,,keep,cat,,"])
    assert main(["decisions", "import", str(unfitted), str(ok)]) == 2
    assert "has no decoded images" in capsys.readouterr().err
    assert _state(run.decisions) == before


def test_an_import_that_fails_midway_writes_nothing(run, tmp_path, capsys):
    con = sqlite3.connect(run.decisions)  # the disk fills up at the third image of the batch
    con.execute("CREATE TRIGGER full BEFORE INSERT ON decision_log WHEN NEW.path = 'dog/3.png' "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    con.close()
    before = _state(run.decisions)
    good = _write(tmp_path / "good.csv", [HEADER, "cat/1.png,,keep,cat,,", "cat/2.png,,discard,,,",
                                          "dog/3.png,,keep,dog,,", "dog/4.png,,keep,dog,,"])
    assert main(["decisions", "import", str(run.path), str(good)]) == 1  # not bad input: reported as a fault
    assert "database or disk is full" in capsys.readouterr().err
    assert _state(run.decisions) == before


def test_fit_takes_no_memory_as_an_opt_out():
    from engine.cli import build_parser

    args = build_parser().parse_args(["fit", "data", "--run-dir", "r", "--no-memory"])
    assert args.no_memory is True
    assert build_parser().parse_args(["fit", "data", "--run-dir", "r"]).no_memory is False
