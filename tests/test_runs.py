"""Run folders: atomic status, events that survive a torn last line, worker locks and dead workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.runs import worker_lock
from engine.runs.atomic import atomic_write_json, read_json
from engine.runs.rundir import RunDir
from engine.runs.status import ACTIVE_STATES, INTERRUPTED, RESUMABLE_STATES, STATES, effective_state


def test_status_merges_and_stamps(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.write_status(state="running", stage="pretrain", step=1, total=10)
    s = run.write_status(step=2)
    assert s["state"] == "running" and s["step"] == 2 and s["total"] == 10 and "updated_at" in s
    assert run.read_status() == s


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_events_skip_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.append_event(kind="epoch", epoch=1, loss=0.5)
    with open(run.events, "a") as f:
        f.write('{"kind": "epoch", "ep')  # process killed mid-write
    run.append_event(kind="epoch", epoch=2, loss=0.4)
    events = run.read_events()
    assert [e["epoch"] for e in events] == [1, 2]


def test_completed_stages(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.mark_stage_done("prepare")
    run.mark_stage_done("pretrain")
    run.mark_stage_done("prepare")
    assert run.completed_stages() == ["prepare", "pretrain"]
    run.unmark_stages(["pretrain"])
    assert run.completed_stages() == ["prepare"]


def test_running_with_dead_worker_reads_as_interrupted(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    script = "import sys, time; from engine.runs import worker_lock; from engine.runs.rundir import RunDir; " \
             "lock = worker_lock.acquire(RunDir(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", script, str(run.path)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert p.stdout.readline().strip() == "held"
    run.write_status(state="running", pid=p.pid)
    assert effective_state(run) == "running"
    os.kill(p.pid, signal.SIGKILL)  # the kernel frees the lock with the process
    p.wait()
    assert effective_state(run) == "interrupted"
    assert effective_state(run, {"state": "running", "pid": os.getpid()}) == "interrupted"  # a live pid is no proof
    assert effective_state(run, {"state": "done"}) == "done" and effective_state(run, {}) == "new"
    assert INTERRUPTED in STATES and INTERRUPTED in RESUMABLE_STATES and INTERRUPTED not in ACTIVE_STATES


def test_a_worker_lock_is_one_holder_at_a_time(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert not worker_lock.is_held(run) and not run.path.exists()  # probing creates nothing
    first = worker_lock.acquire(run)
    assert first is not None and worker_lock.is_held(run)
    assert worker_lock.acquire(run) is None
    t0 = time.monotonic()
    assert worker_lock.acquire(run, wait_s=0.2) is None and time.monotonic() - t0 >= 0.2
    first.close()
    assert not worker_lock.is_held(run)
    with worker_lock.acquire(run) as again:
        assert again is not None and worker_lock.is_held(run)
    assert not worker_lock.is_held(run)


def test_an_inherited_lock_is_adopted_only_for_its_own_run(tmp_path: Path, monkeypatch) -> None:
    run, other = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    lock = worker_lock.acquire(run)
    worker_lock.acquire(other).close()  # b's lock file exists, unheld
    dup = os.dup(lock.fileno())  # what the child gets: another descriptor of the same open file
    monkeypatch.setenv(worker_lock.FD_VARIABLE, str(dup))
    assert worker_lock.inherited(other) is None  # not b's lock: refused, and the descriptor closed
    assert worker_lock.FD_VARIABLE not in os.environ
    dup = os.dup(lock.fileno())
    monkeypatch.setenv(worker_lock.FD_VARIABLE, str(dup))
    adopted = worker_lock.inherited(run)
    assert adopted is not None and adopted.fileno() == dup
    lock.close()  # the launcher lets go: the adopted copy keeps the run locked
    assert worker_lock.is_held(run)
    adopted.close()
    assert not worker_lock.is_held(run)
    assert worker_lock.inherited(run) is None  # no variable: a worker started from a shell


def test_json_files_stay_strict_json(tmp_path: Path) -> None:
    import json

    import numpy as np

    atomic_write_json(tmp_path / "m.json", {"auroc": float("nan"), "f1": np.float32(0.5), "x": [np.inf, 1]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auroc": None, "f1": 0.5, "x": [None, 1]}
