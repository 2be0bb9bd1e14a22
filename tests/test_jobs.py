"""engine.runs.jobs for real: a fake worker process is started, watched, stopped and killed."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.runs import integrity, jobs, owner, worker_lock
from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (the tests' own check; the engine watches run locks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

# The worker stands in for `python -m engine`: it gets the same argv (fit DATA --run-dir RUN ... or
# finetune RUN), writes status.json like the engine does, and behaves as FAKE_WORKER_MODE says.
WORKER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    sys.path.insert(0, {repo!r})
    from engine.runs.rundir import RunDir
    args = sys.argv[1:]
    run = RunDir(args[args.index("--run-dir") + 1] if "--run-dir" in args else args[1])
    mode = os.environ.get("FAKE_WORKER_MODE", "finish")
    print("worker args:", " ".join(args), flush=True)
    if mode.startswith("late-"):  # a slow start-up (imports): nothing written for a while
        time.sleep(1.0)
        mode = mode[len("late-"):]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def cancel(signum, frame):
            run.write_status(state="cancelled", message="checkpoint saved")
            sys.exit(0)
        signal.signal(signal.SIGTERM, cancel)
    run.write_status(state="running", stage="pretrain", step=1, total=4, pid=os.getpid())
    if mode == "finish":
        time.sleep(0.3)
        run.write_status(state="done", stage="embed", step=4, total=4)
        sys.exit(0)
    if mode == "crash":
        print("Traceback (most recent call last):\\nRuntimeError: boom", flush=True)
        sys.exit(1)
    if mode == "stubborn":  # a child in the same process group must die with it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        run.append_event(kind="child", pid=child.pid)
    while True:
        time.sleep(0.05)
""")


@pytest.fixture
def worker(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_worker.py"
    script.write_text(WORKER.format(repo=str(REPO)))
    return [sys.executable, str(script)]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ws" / "runs").mkdir(parents=True)
    return tmp_path / "ws"


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def state(run_dir: Path) -> str | None:
    return jobs.poll(run_dir).get("state")


@pytest.mark.slow
def test_start_runs_the_fit_command_until_done(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "finish")
    run_dir = ws / "runs" / jobs.new_run_id()
    pid = jobs.start(Path("/data/digits"), run_dir, ["--loss", "ce"], command_prefix=worker)
    status = RunDir(run_dir).read_status()
    assert status["phase"] == "fit" and status["state"] in ("queued", "running")
    assert read_json(RunDir(run_dir).launch)["pid"] == pid  # the launcher's record; status.json is the worker's
    assert jobs.active_run(ws) == run_dir
    wait_for(lambda: RunDir(run_dir).read_status().get("pid") == pid)  # the worker wrote its own pid
    wait_for(lambda: state(run_dir) == "done")
    wait_for(lambda: not pid_alive(pid), timeout=5)  # it writes "done", then exits
    log = RunDir(run_dir).log.read_text()
    assert f"worker args: fit /data/digits --run-dir {run_dir} --loss ce --quiet" in log
    launch = read_json(RunDir(run_dir).launch)
    assert launch["command"][-7:] == ["fit", "/data/digits", "--run-dir", str(run_dir), "--loss", "ce", "--quiet"]
    assert launch["data"] == "/data/digits"
    assert jobs.active_run(ws) is None and not worker_lock.is_held(RunDir(run_dir))  # the lock went with the worker


@pytest.mark.slow
def test_one_run_at_a_time(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "hang")
    first = ws / "runs" / "2026-01-01T00-00-00_aaaa"
    second = ws / "runs" / "2026-01-01T00-00-01_bbbb"
    jobs.start(Path("/d"), first, command_prefix=worker)
    with pytest.raises(jobs.JobError, match="2026-01-01T00-00-00_aaaa is still active"):
        jobs.start(Path("/d"), second, command_prefix=worker)
    assert not second.exists()  # nothing was created for the refused run
    assert jobs.stop(first)["state"] == "cancelled"
    jobs.start(Path("/d"), second, command_prefix=worker)
    assert jobs.active_run(ws) == second
    jobs.stop(second)


@pytest.mark.slow
def test_stop_lets_the_worker_checkpoint_and_cancel(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "hang")
    run_dir = ws / "runs" / jobs.new_run_id()
    pid = jobs.start(Path("/d"), run_dir, command_prefix=worker)
    wait_for(lambda: state(run_dir) == "running")
    t0 = time.monotonic()
    status = jobs.stop(run_dir)
    assert time.monotonic() - t0 < 5
    assert status["state"] == "cancelled"
    assert status["message"] == "checkpoint saved"  # written by the worker's own SIGTERM handler
    assert not pid_alive(pid)
    assert jobs.active_run(ws) is None


@pytest.mark.slow
def test_stop_kills_a_worker_that_ignores_sigterm_and_its_children(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "stubborn")
    run_dir = ws / "runs" / jobs.new_run_id()
    pid = jobs.start(Path("/d"), run_dir, command_prefix=worker)
    wait_for(lambda: any(e.get("kind") == "child" for e in RunDir(run_dir).read_events()))
    child = next(e["pid"] for e in RunDir(run_dir).read_events() if e.get("kind") == "child")
    status = jobs.stop(run_dir, grace_s=0.5)
    assert status["state"] == "cancelled" and status["message"] == "stopped by the user"
    assert not pid_alive(pid)
    wait_for(lambda: not pid_alive(child), timeout=5)  # SIGKILL went to the whole process group


@pytest.mark.slow
def test_a_crashed_worker_reads_as_interrupted_with_its_log(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
    run_dir = ws / "runs" / jobs.new_run_id()
    jobs.start(Path("/d"), run_dir, command_prefix=worker)
    wait_for(lambda: state(run_dir) == "interrupted")
    assert RunDir(run_dir).read_status()["state"] == "running"  # what it last wrote; readers write nothing
    assert jobs.log_tail(run_dir, lines=1) == "RuntimeError: boom"
    assert jobs.active_run(ws) is None


def test_a_running_status_without_a_live_worker_reads_as_interrupted(ws):
    run_dir = ws / "runs" / "2026-01-01T00-00-00_dead"
    RunDir(run_dir).write_status(state="running", phase="fit", pid=os.getpid())  # a live pid, but no lock held
    assert state(run_dir) == "interrupted"
    assert jobs.active_run(ws) is None
    assert jobs.stop(run_dir)["state"] == "interrupted"  # nothing to stop
    assert RunDir(run_dir).read_status()["state"] == "running"


def test_a_queued_run_whose_launcher_died_reads_as_interrupted_at_once(ws):
    run = RunDir(ws / "runs" / "2026-01-01T00-00-00_nopd")
    run.write_status(state="queued", phase="fit", pid=None)
    assert state(run.path) == "interrupted"
    with worker_lock.acquire(run):  # while the launcher (or the worker it started) holds the lock
        assert state(run.path) == "queued" and jobs.active_run(ws) == run.path
    assert state(run.path) == "interrupted"


def test_a_missing_executable_fails_cleanly(ws):
    run_dir = ws / "runs" / jobs.new_run_id()
    with pytest.raises(jobs.JobError, match="could not start the worker"):
        jobs.start(Path("/d"), run_dir, command_prefix=["/nonexistent/python"])
    assert RunDir(run_dir).read_status()["state"] == "failed"
    assert not worker_lock.is_held(RunDir(run_dir)) and jobs.active_run(ws) is None


@pytest.mark.slow
def test_resume_continues_with_the_same_data(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "finish")
    run_dir = ws / "runs" / jobs.new_run_id()
    RunDir(run_dir).write_status(state="cancelled", phase="fit", completed_stages=["prepare"])
    (run_dir / "source.json").write_text(json.dumps({"data": "/data/sample", "root": "/data/sample"}))
    jobs.resume(run_dir, command_prefix=worker)
    wait_for(lambda: state(run_dir) == "done")
    assert f"worker args: fit /data/sample --run-dir {run_dir} --resume --quiet" in RunDir(run_dir).log.read_text()
    assert RunDir(run_dir).read_status()["completed_stages"] == ["prepare"]  # the launcher keeps them


@pytest.mark.slow
def test_finetune_needs_phase_a_and_runs_finetune(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "finish")
    run_dir = ws / "runs" / jobs.new_run_id()
    owner.claim(RunDir(run_dir))  # a run the app made (its marker), whose phase (a) has not finished
    with pytest.raises(jobs.JobError, match="no samples.csv"):
        jobs.start_finetune(run_dir, command_prefix=worker)
    (run_dir / "samples.csv").write_text("index,path\n")
    jobs.start_finetune(run_dir, command_prefix=worker)
    assert RunDir(run_dir).read_status()["phase"] == "finetune"
    wait_for(lambda: state(run_dir) == "done")
    assert f"worker args: finetune {run_dir} --quiet" in RunDir(run_dir).log.read_text()


def test_resume_without_any_record_of_the_data_is_refused(ws):
    run_dir = ws / "runs" / "2026-01-01T00-00-00_none"
    RunDir(run_dir).write_status(state="cancelled", phase="fit")
    with pytest.raises(jobs.JobError, match="does not say which dataset"):
        jobs.resume(run_dir)


def test_detect_devices_parses_json_and_falls_back_to_cpu(tmp_path):
    good = tmp_path / "good.py"
    good.write_text('import json; print("loading"); print(json.dumps({"cuda": True, "devices": '
                    '[{"name": "NVIDIA H100", "memory_gb": 79.6}], "default": "cuda"}))')
    info = jobs.detect_devices(command_prefix=[sys.executable, str(good)])
    assert info == {"cuda": True, "devices": [{"name": "NVIDIA H100", "memory_gb": 79.6}], "default": "cuda"}
    bad = tmp_path / "bad.py"
    bad.write_text('import sys; sys.exit("no module named torch")')
    info = jobs.detect_devices(command_prefix=[sys.executable, str(bad)])
    assert info["cuda"] is False and info["default"] == "cpu"
    assert info["error"] == "`python -m engine devices` failed: no module named torch"


def test_run_ids_sort_by_time():
    from datetime import datetime

    a = jobs.new_run_id(datetime(2026, 1, 2, 3, 4, 5))
    b = jobs.new_run_id(datetime(2026, 1, 2, 3, 4, 6))
    assert a.startswith("2026-01-02T03-04-05_") and a < b


def test_signals_are_only_sent_to_live_workers(ws, monkeypatch):
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append((pid, sig)))
    run_dir = ws / "runs" / "2026-01-01T00-00-00_done"
    RunDir(run_dir).write_status(state="done", pid=os.getpid())
    assert jobs.stop(run_dir)["state"] == "done"
    assert sent == []


@pytest.mark.slow
def test_the_run_lock_is_held_from_queued_to_the_workers_exit(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "late-finish")
    run_dir = ws / "runs" / jobs.new_run_id()
    jobs.start(Path("/d"), run_dir, command_prefix=worker)
    # The child has written nothing yet, and the launcher has let go of its copy: the child's holds the lock.
    assert RunDir(run_dir).read_status()["state"] == "queued"
    assert state(run_dir) == "queued" and jobs.active_run(ws) == run_dir
    with pytest.raises(jobs.JobError, match="is still active"):
        jobs.start(Path("/d"), ws / "runs" / jobs.new_run_id(), command_prefix=worker)
    wait_for(lambda: state(run_dir) == "done")
    wait_for(lambda: not worker_lock.is_held(RunDir(run_dir)), timeout=5)  # it writes "done", then exits


def test_a_run_started_from_a_shell_keeps_the_app_from_starting_another(ws, worker):
    busy = RunDir(ws / "runs" / "2026-01-01T00-00-00_cli0")
    with worker_lock.acquire(busy):  # `python -m engine fit ... --run-dir WORKSPACE/runs/...` holds it
        with pytest.raises(jobs.JobError, match="2026-01-01T00-00-00_cli0 is still active"):
            jobs.start(Path("/d"), ws / "runs" / "2026-01-01T00-00-01_new0", command_prefix=worker)
    assert not (ws / "runs" / "2026-01-01T00-00-01_new0").exists()


def test_a_run_that_has_a_worker_cannot_be_launched_again(ws, worker):
    run = RunDir(ws / "runs" / "2026-01-01T00-00-00_twic")
    run.write_status(state="cancelled", phase="fit")
    other = worker_lock.acquire(run)
    assert other is not None
    with pytest.raises(jobs.JobError, match="is still active"):
        jobs.launch(run.path, ["fit", "/d", "--run-dir", str(run.path)], phase="fit", workspace=ws / "elsewhere",
                    command_prefix=worker)
    other.close()
    assert run.read_status()["state"] == "cancelled"  # the refused launch wrote nothing


@pytest.mark.slow
def test_the_engine_adopts_the_lock_and_records_why_it_refused(ws, tmp_path):
    """A real `python -m engine fit` launched by the app: it owns the run from its first act, so a
    refusal (other settings than the run's) is written to status.json for the app to show."""
    from engine.config import RunConfig, save

    run = RunDir(ws / "runs" / jobs.new_run_id())
    owner.claim(run)
    save(RunConfig(), run.config)  # 12 classifier epochs
    pid = jobs.start(tmp_path / "data", run.path, ["--epochs", "5"])
    wait_for(lambda: state(run.path) == "failed", timeout=120)
    status = run.read_status()
    assert status["pid"] == pid  # written by the worker itself
    assert "already holds a run with other settings" in status["error"]
    assert not worker_lock.is_held(run)


@pytest.mark.slow
def test_resume_runs_the_command_that_repairs_a_damaged_run(ws, worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "finish")
    run = RunDir(ws / "runs" / jobs.new_run_id())
    owner.claim(run)
    (run.path / "source.json").write_text(json.dumps({"data": "/data/sample", "root": "/data/sample"}))
    (run.path / "samples.csv").write_text(",".join(integrity.SAMPLES_COLUMNS) + "\n")

    def resumed_with() -> str:
        jobs.resume(run.path, command_prefix=worker)
        wait_for(lambda: state(run.path) == "done" and not worker_lock.is_held(run))  # written "done", exited
        return run.log.read_text().splitlines()[-1]  # the worker's own first line

    # phase (b) failed, nothing damaged: fine-tuning continues (and may repair its own files)
    run.write_status(state="failed", phase="finetune", completed_stages=["split"])
    assert resumed_with() == f"worker args: finetune {run.path} --resume --quiet"
    # the worker said a phase (a) file is damaged (one only torch's loader finds): `fit --resume` repairs it
    run.write_status(state="failed", phase="finetune", repair="fit")
    assert resumed_with() == f"worker args: fit /data/sample --run-dir {run.path} --resume --quiet"
    # a phase (a) file that is visibly damaged: the same, whatever the worker said
    run.checkpoint("train").parent.mkdir(exist_ok=True)
    run.checkpoint("train").write_bytes(b"garbage")
    run.write_status(state="failed", phase="finetune", repair=None)
    assert resumed_with() == f"worker args: fit /data/sample --run-dir {run.path} --resume --quiet"


def test_the_launcher_refuses_a_folder_that_is_not_a_run_and_marks_a_new_one(ws, worker):
    mine = ws / "runs" / "2026-01-01T00-00-00_mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(jobs.JobError, match="is a folder CLeaN did not make"):
        jobs.start(Path("/d"), mine, command_prefix=worker)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    new = ws / "runs" / "2026-01-01T00-00-01_new0"
    jobs.start(Path("/d"), new, command_prefix=worker)
    assert owner.is_marked(RunDir(new))
    wait_for(lambda: state(new) == "done")
