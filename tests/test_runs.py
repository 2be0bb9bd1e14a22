"""Run folders: atomic status, events that survive a torn last line, stale workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.runs.atomic import atomic_write_json, read_json
from engine.runs.rundir import RunDir
from engine.runs.status import effective_state, pid_alive


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


def test_running_with_dead_worker_reads_as_failed(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    assert effective_state({"state": "running", "pid": p.pid}) == "failed"
    assert effective_state({"state": "running", "pid": os.getpid()}) == "running"
    assert effective_state({"state": "done", "pid": p.pid}) == "done"


def test_json_files_stay_strict_json(tmp_path: Path) -> None:
    import json

    import numpy as np

    atomic_write_json(tmp_path / "m.json", {"auroc": float("nan"), "f1": np.float32(0.5), "x": [np.inf, 1]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auroc": None, "f1": 0.5, "x": [None, 1]}
