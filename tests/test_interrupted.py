"""A real worker, started the way the app starts it (engine.runs.jobs), killed with SIGKILL in the middle of
training: the run reads as "interrupted" and jobs.resume finishes it — in phase (a) with `fit --resume`,
in phase (b) with `finetune --resume`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.runs import jobs, worker_lock
from engine.runs.rundir import RunDir
from engine.runs.status import ACTIVE_STATES, INTERRUPTED, effective_state

pytestmark = pytest.mark.slow

FLAGS = ["--device", "cpu", "--pretrain-epochs", "3", "--epochs", "2", "--batch-size", "8", "--image-size", "16",
         "--seed", "5", "--set", "embed.enabled=false", "--set", "finetune.epochs=3", "--set",
         "finetune.head_epochs=1", "--set", "finetune.full_epochs=1",
         "--set", "finetune.require_decisions=false"]  # phase (b) below runs without review decisions


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.02)


def kill_mid_stage(run: RunDir, pid: int, stage: str) -> None:
    """SIGKILL the worker's process group once the stage has logged its first epoch. The checkpoint is
    written before the event (a logged epoch is never redone), so waiting for the file alone could kill
    between the two and leave an epoch trained but never logged."""
    wait_for(lambda: run.checkpoint(stage, last=True).exists() and run.events.exists() and epochs(run, stage),
             240, f"the first {stage} epoch")
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not worker_lock.is_held(run), 20, "the kernel to free the run's lock")
    assert not run.checkpoint(stage).exists(), f"{stage} finished before the kill"


def finish(run: RunDir) -> dict:
    wait_for(lambda: jobs.poll(run.path).get("state") not in ACTIVE_STATES, 300, "the resumed worker")
    return jobs.poll(run.path)


def epochs(run: RunDir, stage: str) -> list[int]:
    events = [json.loads(line) for line in run.events.read_text().splitlines() if line.strip().endswith("}")]
    return [e["epoch"] for e in events if e.get("kind") == "epoch" and e["stage"] == stage]


def test_a_worker_killed_in_either_phase_reads_as_interrupted_and_resumes(tmp_path: Path) -> None:
    from conftest import write_pattern_folder

    data = write_pattern_folder(tmp_path / "data", per_class=6)
    ws = tmp_path / "ws"
    run = RunDir(jobs.runs_root(ws) / jobs.new_run_id())

    pid = jobs.start(data, run.path, FLAGS, workspace=ws)
    kill_mid_stage(run, pid, "pretrain")
    assert run.read_status()["state"] in ACTIVE_STATES  # the worker had no time to say anything
    assert effective_state(run) == INTERRUPTED and jobs.poll(run.path)["state"] == INTERRUPTED
    assert jobs.active_run(ws) is None  # a dead worker does not keep the workspace busy
    jobs.resume(run.path, workspace=ws)
    status = finish(run)
    assert status["state"] == "done", jobs.log_tail(run.path)
    assert f"fit {data} --run-dir {run.path} --resume --quiet" in run.log.read_text()
    assert epochs(run, "pretrain") == list(range(1, 4))  # every epoch trained once: resumed, not restarted
    assert {"prepare", "pretrain", "warmup", "train", "predict", "split"} <= set(status["completed_stages"])

    pid = jobs.start_finetune(run.path, workspace=ws)
    kill_mid_stage(run, pid, "supcon")
    assert effective_state(run) == INTERRUPTED
    jobs.resume(run.path, workspace=ws)
    status = finish(run)
    assert status["state"] == "done", jobs.log_tail(run.path)
    assert f"finetune {run.path} --resume --quiet" in run.log.read_text()
    assert epochs(run, "supcon") == list(range(1, 4))
    assert {"supcon", "head", "refresh"} <= set(status["completed_stages"])
    assert run.samples_before.exists() and run.samples.exists()
