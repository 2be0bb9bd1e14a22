"""Run folders belong to CLeaN (engine.runs.owner), and the strict readers that tell missing from damaged."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from engine.cli import main as cli_main
from engine.config import RunConfig, save
from engine.runs import owner, worker_lock
from engine.runs.atomic import DamagedFile, atomic_write_json, load_json, read_json
from engine.runs.rundir import RUN_FORMAT, RunDir


def tree(root: Path) -> dict[str, str]:
    """Every entry below root with its content's digest (folders and pipes by kind)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            out[str(path.relative_to(root))] = (hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file()
                                                else "dir" if path.is_dir() else "other")
    return out


def within(seconds: float, call):
    """call() (its value, or its exception raised here), failing the test instead of hanging when it
    blocks (a named pipe opened for reading)."""
    result: list = []

    def target() -> None:
        try:
            result.append((call(), None))
        except Exception as e:  # handed to the test's thread
            result.append((None, e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"blocked for more than {seconds} s"
    value, error = result[0]
    if error is not None:
        raise error
    return value


# ----------------------------------------------------------------------------- which folders are runs


def test_a_new_or_empty_folder_may_become_a_run(tmp_path: Path) -> None:
    assert owner.ownership_problem(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert owner.ownership_problem(tmp_path / "empty") is None
    run = RunDir(tmp_path / "new" / "deeper")
    owner.claim(run)
    marker = json.loads(run.marker.read_text())
    assert marker["clean_run"] == RUN_FORMAT and marker["created_at"]
    assert owner.is_marked(run) and owner.ownership_problem(run.path) is None


def test_a_folder_of_the_users_is_refused_naming_it(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("notes.txt", "samples.csv", "status.json", "b.txt", "c.txt"):
        (mine / name).write_text("{}")
    problem = owner.ownership_problem(mine)
    assert problem == (f"--run-dir {mine} is a folder CLeaN did not make (it holds b.txt, c.txt, notes.txt, "
                       "samples.csv and 1 more, and no .clean-run), so nothing in it is changed: give a new or "
                       "empty folder for the run")
    (tmp_path / "afile").write_text("x")
    assert owner.ownership_problem(tmp_path / "afile", flag="run folder") == (
        f"run folder {tmp_path / 'afile'} is a file, not a folder: give a new or empty folder for the run")


def test_a_run_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.marker, {"clean_run": RUN_FORMAT + 1})
    assert "is a run of a newer CLeaN (run format 2" in owner.ownership_problem(run.path)


def test_runs_made_before_the_marker_are_recognised_and_then_marked(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "old")
    run.write_status(state="done", completed_stages=["prepare"])
    save(RunConfig(), run.config)
    (run.path / "samples.csv").write_text("index\n")
    assert owner.ownership_problem(run.path) is None and not owner.is_marked(run)
    owner.claim(run)
    assert owner.is_marked(run)
    # Started from the app but refused before config.json: CLeaN's names only, and CLeaN's status.json.
    launched = RunDir(tmp_path / "launched")
    launched.write_status(state="failed", phase="fit")
    (launched.path / "launch.json").write_text("{}")
    (launched.path / ".worker.lock").write_text("")
    assert owner.ownership_problem(launched.path) is None
    (launched.path / "mine.txt").write_text("mine")
    assert "is a folder CLeaN did not make" in owner.ownership_problem(launched.path)


@pytest.mark.parametrize("status", ['{"mine": true}', '{"state": "asleep", "updated_at": "x"}', "[1]", "\xff"])
def test_a_status_json_that_is_not_cleans_makes_no_run(tmp_path: Path, status: str) -> None:
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.status_file.write_text(status, encoding="latin-1")
    save(RunConfig(), run.config)
    assert "CLeaN did not make" in owner.ownership_problem(run.path)


def test_fit_on_a_users_folder_changes_nothing_in_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "data")
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / ".draft.tmp").write_text("draft")
    (mine / ".status.json.abcd1234.tmp").write_text("looks like ours, is not")
    (mine / "status.json").write_text('{"mine": true}')
    (mine / "checkpoints" / "pretrain.pt").write_bytes(b"not ours")
    before = tree(tmp_path)
    assert cli_main(["fit", str(data), "--run-dir", str(mine), "--device", "cpu", "--quiet"]) == 2
    assert f"--run-dir {mine} is a folder CLeaN did not make" in capsys.readouterr().err
    assert cli_main(["finetune", str(mine)]) == 2
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- which files are CLeaN's


def test_only_temp_files_of_cleans_names_are_stale_and_only_in_a_marked_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    ours = [run.path / ".status.json.k3j2h1g0.tmp", run.checkpoints / ".train.last.pt.a1b2c3d4.tmp",
            run.data / ".images.x9y8z7w6.npy.tmp", run.data / ".images.packed.q1w2e3r4.npy.tmp",
            run.data / ".manifest.csv.abcdefgh.tmp", run.test_data / ".intake.json.abcdefgh.tmp"]
    theirs = [run.path / ".draft.tmp", run.path / ".notes.txt.abcdefgh.tmp", run.path / ".status.json.tmp",
              run.checkpoints / ".mine.pt.abcdefgh.tmp", run.data / ".images.npy.tmp",
              run.path / ".review_selection.json.abcdefgh.tmp"]  # the app's, written without the lock
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert owner.stale_temp_files(run) == []  # no marker: nothing in the folder is CLeaN's
    owner.claim(run)
    assert owner.stale_temp_files(run) == sorted(ours)
    assert owner.remove_stale_temp_files(run) == len(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


# ----------------------------------------------------------------------------- missing or damaged


@pytest.mark.parametrize(("content", "reason"), [
    (b"\xff\xfe{", "not UTF-8 text"),
    (b'{"a": ', "not JSON: Expecting value at line 1 column 7"),
    (b"[" * 200_000, "JSON nested too deeply"),
])
def test_load_json_tells_damaged_from_missing(tmp_path: Path, content: bytes, reason: str) -> None:
    with pytest.raises(FileNotFoundError):
        load_json(tmp_path / "none.json")
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFile) as e:
        load_json(path)
    assert e.value.reason == reason and str(e.value) == f"{path} is damaged ({reason})"
    assert read_json(path, default="fallback") == "fallback" and read_json(tmp_path / "none.json", 7) == 7


def test_json_readers_never_block_on_a_pipe_or_read_a_folder(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(DamagedFile, match=r"pipe.json is damaged \(a named pipe, not a regular file\)"):
        within(10, lambda: load_json(tmp_path / "pipe.json"))
    assert within(10, lambda: read_json(tmp_path / "pipe.json", default={})) == {}
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DamagedFile, match="a folder, not a regular file"):
        load_json(tmp_path / "dir.json")


def test_status_readers(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.load_status() == {} and run.read_status() == {}
    run.status_file.write_text("[1, 2]")
    with pytest.raises(DamagedFile, match="a JSON list, not an object"):
        run.load_status()
    assert run.read_status() == {}  # the app polls: it shows "new" and `status` names the file
    os.unlink(run.status_file)
    os.mkfifo(run.status_file)
    assert within(10, run.read_status) == {}


def test_events_survive_garbage_bytes(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_event(kind="epoch", epoch=1)
    with open(run.events, "ab") as f:
        f.write(bytes(range(7, 251)) + b"\n[1]\n")
    run.append_event(kind="epoch", epoch=2)
    assert [e["epoch"] for e in run.read_events()] == [1, 2]


def test_a_pipe_for_a_worker_lock_does_not_hang_readers(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    os.mkfifo(run.worker_lock)
    assert within(10, lambda: worker_lock.is_held(run)) is False
