"""The workspace memory: every run's decisions remembered by content, seeded into new runs, undo-safe."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fixtures_review import make_run, sha

from engine.review.decisions import DecisionStore, Restore
from engine.review.hashes import image_hashes
from engine.review.memory import Memory, memory_path, open_run_store, seed_run_store, workspace_root

IMAGES = [("cat/1.png", "cat", "k1"), ("cat/2.png", "cat", "k2"), ("dog/3.png", "dog", "k3"),
          ("dog/4.png", "dog", "k4")]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "workspace"
    monkeypatch.setenv("CLEAN_WORKSPACE", str(ws))
    return ws


def _hashed_run(base: Path, images=IMAGES, name: str = "run"):  # noqa: ANN001, ANN202
    run = make_run(base, images, name=name)
    image_hashes(run.path, base / f"{name}-data", [p for p, _, _ in images])
    return run


def test_the_workspace_is_resolved_in_the_engine_and_the_app_uses_it(tmp_path, monkeypatch):
    from ui import workspace as ui_workspace

    monkeypatch.setenv("CLEAN_WORKSPACE", str(tmp_path / "ws" / ".." / "ws"))
    assert workspace_root() == ui_workspace.workspace_root() == (tmp_path / "ws").resolve()
    assert memory_path() == (tmp_path / "ws" / "memory.sqlite").resolve()
    monkeypatch.delenv("CLEAN_WORKSPACE")
    assert workspace_root() == ui_workspace.workspace_root() == Path(__file__).resolve().parent.parent / "workspace"


def test_every_decision_of_a_run_is_remembered_by_its_sha256(workspace, tmp_path):
    run = _hashed_run(tmp_path)
    store = open_run_store(run.path)
    store.decide(["cat/1.png"], "relabel", "dog", source="tab")
    store.decide(["dog/3.png"], "skip", source="tab")
    assert store.memory_error is None
    remembered = {e.sha256: (e.path, e.action, e.label, e.source, e.run) for e in Memory().entries()}
    assert remembered == {sha("k1"): ("cat/1.png", "relabel", "dog", "tab", str(run.path.resolve())),
                          sha("k3"): ("dog/3.png", "skip", None, "tab", str(run.path.resolve()))}
    assert (workspace / "memory.sqlite").is_file()
    assert store.get("cat/1.png").sha256 == sha("k1")  # the run's own store carries the hash too


def test_a_new_run_on_renamed_and_moved_files_starts_with_their_decisions(workspace, tmp_path):
    first = _hashed_run(tmp_path, name="first")
    store = open_run_store(first.path)
    store.decide(["cat/1.png"], "relabel", "dog", source="tab")
    store.decide(["cat/2.png"], "keep", "cat", source="tab")
    store.decide(["dog/3.png"], "discard", source="tab")
    store.decide(["dog/4.png"], "relabel", "fox", source="tab")
    # the re-upload: renamed, moved to other class folders, a class less, one unknown image
    moved = [("x/a.png", "dog", "k1"), ("y/b.png", "dog", "k2"), ("z/c.png", "cat", "k3"), ("w/d.png", "dog", "k4"),
             ("v/new.png", "cat", "k9")]
    second = make_run(tmp_path, moved, classes=("cat", "dog"), name="second")
    n = seed_run_store(second.path, [p for p, _, _ in moved], [sha(k) for _, _, k in moved], ["cat", "dog"],
                       given=[g for _, g, _ in moved])
    now = DecisionStore(second.decisions).all()
    assert n == 3
    assert {p: (d.action, d.label, d.source, d.sha256) for p, d in now.items()} == {
        "x/a.png": ("keep", "dog", "memory", sha("k1")),  # relabel to dog; its given label is dog now
        "y/b.png": ("relabel", "cat", "memory", sha("k2")),  # kept as cat, but now filed under dog
        "z/c.png": ("discard", None, "memory", sha("k3")),
    }  # w/d.png was relabeled to fox, which is no class of the new run: not carried over
    assert now["x/a.png"].decided_at == DecisionStore(first.decisions).get("cat/1.png").decided_at
    assert [r["source"] for r in DecisionStore(second.decisions).log()] == ["memory"] * 3
    assert len(Memory().entries()) == 4  # seeding writes nothing back into the memory


def test_seeding_never_replaces_a_decision_the_run_has(workspace, tmp_path):
    run = _hashed_run(tmp_path)
    open_run_store(run.path).decide(["cat/1.png", "cat/2.png"], "discard", source="tab")
    other = make_run(tmp_path, IMAGES[:2], name="other")
    DecisionStore(other.decisions).decide(["cat/1.png"], "keep", "cat", source="reviewer")
    assert seed_run_store(other.path, ["cat/1.png", "cat/2.png"], [sha("k1"), sha("k2")], ["cat", "dog"]) == 1
    now = DecisionStore(other.decisions).all()
    assert (now["cat/1.png"].action, now["cat/1.png"].source) == ("keep", "reviewer")
    assert (now["cat/2.png"].action, now["cat/2.png"].source) == ("discard", "memory")


def test_path_matches_only_where_a_sha256_is_unknown(workspace, tmp_path):
    run = make_run(tmp_path, IMAGES)  # no hash cache: decisions are remembered by path
    open_run_store(run.path).decide(["cat/1.png"], "relabel", "dog", source="tab")
    hashed = _hashed_run(tmp_path, name="hashed")
    open_run_store(hashed.path).decide(["dog/3.png"], "discard", source="tab")
    assert {(e.sha256, e.path) for e in Memory().entries()} == {(None, "cat/1.png"), (sha("k3"), "dog/3.png")}
    new = make_run(tmp_path, [("cat/1.png", "cat", "other1"), ("dog/3.png", "dog", "other3")], name="new")
    paths = ["cat/1.png", "dog/3.png"]
    # hashes known: cat/1.png matches the path-only entry; dog/3.png holds other bytes than the decided image
    assert seed_run_store(new.path, paths, [sha("other1"), sha("other3")], ["cat", "dog"]) == 1
    assert sorted(DecisionStore(new.decisions).all()) == ["cat/1.png"]
    blind = make_run(tmp_path, [("dog/3.png", "dog", "k3")], name="blind")
    assert seed_run_store(blind.path, ["dog/3.png"], [None], ["cat", "dog"]) == 1  # this image's hash unknown
    assert DecisionStore(blind.decisions).get("dog/3.png").action == "discard"


def test_an_undo_in_one_run_never_wipes_a_later_decision_of_another_run(workspace, tmp_path):
    a = open_run_store(_hashed_run(tmp_path, name="a").path)
    b = open_run_store(_hashed_run(tmp_path, name="b").path)
    a.decide(["cat/1.png"], "relabel", "dog", source="tab-a")
    b.decide(["cat/1.png"], "discard", source="tab-b")  # later, in another run, on the same image
    assert a.restore([Restore("cat/1.png", "relabel", "dog", None, None)], source="tab-a") == 1  # a's own undo
    a.clear(["cat/1.png"], source="tab-a")
    assert [(e.action, e.source) for e in Memory().entries()] == [("discard", "tab-b")]
    b.restore([Restore("cat/1.png", "discard", None, None, None)], source="tab-b")  # b takes its own back
    assert Memory().entries() == []
    log = Memory().log()
    assert [(r["action"], r["prev_action"], r["source"]) for r in log] == [
        ("relabel", None, "tab-a"), ("discard", "relabel", "tab-b"), (None, "discard", "tab-b")]


def test_a_broken_memory_is_reported_and_the_runs_decision_stands(workspace, tmp_path):
    (workspace / "memory.sqlite").mkdir(parents=True)
    run = _hashed_run(tmp_path)
    store = open_run_store(run.path)
    assert store.decide(["cat/1.png"], "keep", "cat", source="tab") == 1
    assert DecisionStore(run.decisions).get("cat/1.png").action == "keep"
    assert store.memory_error == ("the decision is saved in the run, but the workspace memory could not record it: "
                                  f"{workspace / 'memory.sqlite'} is not a CLeaN decision memory (it is a folder); "
                                  "move it away")
    assert list((workspace / "memory.sqlite").iterdir()) == []


def test_a_foreign_memory_file_is_never_changed(workspace, tmp_path):
    workspace.mkdir()
    con = sqlite3.connect(workspace / "memory.sqlite")
    con.execute("CREATE TABLE memory (note TEXT)")
    con.commit()
    con.close()
    before = (workspace / "memory.sqlite").read_bytes()
    store = open_run_store(_hashed_run(tmp_path).path)
    store.decide(["cat/1.png"], "discard", source="tab")
    assert "its memory table lacks the columns" in store.memory_error
    assert (workspace / "memory.sqlite").read_bytes() == before


def test_without_a_memory_nothing_is_seeded_and_nothing_created(workspace, tmp_path):
    run = make_run(tmp_path, IMAGES)
    assert seed_run_store(run.path, ["cat/1.png"], [sha("k1")], ["cat"]) == 0
    assert not workspace.exists() and not run.decisions.exists()
    with pytest.raises(ValueError, match="aligned"):
        seed_run_store(run.path, ["cat/1.png"], [], ["cat"])
    store = open_run_store(run.path, remember=False)
    store.decide(["cat/1.png"], "keep", "cat")
    assert not workspace.exists()  # a run that opted out writes only its own store


def test_seeding_from_a_foreign_memory_file_is_a_clear_error_that_changes_nothing(workspace, tmp_path):
    from engine.errors import UserError

    workspace.mkdir()
    (workspace / "memory.sqlite").write_bytes(b"not a database at all")
    run = make_run(tmp_path, IMAGES)
    with pytest.raises(UserError, match=r"memory\.sqlite is not a CLeaN decision memory \(not an SQLite database\)"):
        seed_run_store(run.path, ["cat/1.png"], [sha("k1")], ["cat"])
    assert (workspace / "memory.sqlite").read_bytes() == b"not a database at all" and not run.decisions.exists()
