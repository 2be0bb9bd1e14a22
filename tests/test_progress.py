"""Progress a person can trust: counts that survive a resume, ETAs from the recent rate, the whole run's ETA."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runs.progress import RATE_WINDOW_S, Planned, Progress, Span
from engine.runs.rundir import RunDir


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def steps(progress: Progress, clock: Clock, n: int, *, seconds: float, images: int = 10) -> None:
    for _ in range(n):
        clock.t += seconds
        progress.advance(1, images=images)


def test_the_eta_follows_the_recent_rate_not_the_average(tmp_path: Path, clock: Clock) -> None:
    run = RunDir(tmp_path)
    p = Progress(run, show=False, clock=clock)
    p.stage_start("pretrain", total=100)
    steps(p, clock, 40, seconds=1.0)  # a free machine: 1 step/s ...
    steps(p, clock, 5, seconds=10.0)  # ... then a busy one: 10 s/step, for longer than the window
    assert p.eta_s() == pytest.approx(55 * 10.0)  # the average since the start would say 55 / (45/90) = 110 s
    assert p.images_per_s() == pytest.approx(1.0)
    status = run.read_status()
    assert status["step"] == 45 and status["eta_s"] == pytest.approx(550.0) and status["images_per_s"] == 1.0
    steps(p, clock, 40, seconds=1.0)  # free again: within one window the estimate is back
    assert p.eta_s() == pytest.approx(15 * 1.0)


def test_the_window_keeps_a_stage_that_is_steady(clock: Clock) -> None:
    p = Progress(None, show=False, clock=clock)
    p.stage_start("train", total=1000)
    assert p.eta_s() is None  # no rate before the first step
    steps(p, clock, 3, seconds=2.0)
    assert p.eta_s() == pytest.approx(997 * 2.0)
    steps(p, clock, 200, seconds=2.0)
    assert p.eta_s() == pytest.approx(797 * 2.0)
    assert RATE_WINDOW_S == 30.0


def test_a_resumed_stage_continues_its_count(tmp_path: Path) -> None:
    import torch

    from engine.train.loop import Rng, run_epochs

    run = RunDir(tmp_path)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    last = run.checkpoint("train", last=True)

    def loop(progress: Progress, stop_at: int | None = None) -> None:
        def step(index: torch.Tensor, global_step: int) -> float:
            if global_step == stop_at:
                raise KeyboardInterrupt  # killed in the middle of epoch 3
            return 0.5

        run_epochs(stage="train", epochs=4, n=8, batch_size=2, rng=Rng.for_stream(0, "train", "cpu"), step=step,
                   modules={"net": net, "opt": opt}, last_ckpt=last, progress=progress)

    with pytest.raises(KeyboardInterrupt):
        loop(Progress(run, show=False), stop_at=9)
    resumed = Progress(run, show=False)
    resumed.stage_start = _record(resumed.stage_start, calls := [])
    loop(resumed)
    assert calls == [("train", 16, 8)]  # 8 of 16 steps were done: the bar starts at 8/16, not at 0/8
    starts = [e for e in run.read_events() if e.get("kind") == "stage" and e.get("state") == "start"]
    assert starts[-1].get("step") == 8
    assert run.read_status()["step"] == 16 and run.read_status()["total"] == 16


def test_an_epoch_event_lost_to_a_kill_is_logged_on_resume(tmp_path: Path) -> None:
    """The epoch checkpoint is written before the epoch's event: a kill between the two loses the event.
    The resumed stage logs it from the checkpoint's history, so every epoch is in events.jsonl once."""
    import torch

    from engine.train import loop as loop_mod
    from engine.train.loop import Rng, run_epochs

    run = RunDir(tmp_path)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    last = run.checkpoint("train", last=True)

    def train(progress: Progress) -> None:
        run_epochs(stage="train", epochs=4, n=8, batch_size=2, rng=Rng.for_stream(0, "train", "cpu"),
                   step=lambda index, g: 0.25 + g, modules={"net": net, "opt": opt}, last_ckpt=last,
                   progress=progress, lr_at=lambda g: 0.01 * g)

    killed = Progress(run, show=False)
    real_log = loop_mod._log_epoch

    def kill_at_epoch_3(progress, stage, epochs, record, lr_at, per_epoch):
        if record.epoch == 3:
            raise KeyboardInterrupt  # after epoch 3's checkpoint, before its event
        real_log(progress, stage, epochs, record, lr_at, per_epoch)

    loop_mod._log_epoch = kill_at_epoch_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train(killed)
    finally:
        loop_mod._log_epoch = real_log
    assert [e["epoch"] for e in run.read_events() if e.get("kind") == "epoch"] == [1, 2]
    train(Progress(run, show=False))
    epochs = [e for e in run.read_events() if e.get("kind") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    third = epochs[2]
    assert third["loss"] == pytest.approx(0.25 + (8 + 9 + 10 + 11) / 4)  # epoch 3's steps 8..11, from the checkpoint
    assert third["lr"] == pytest.approx(0.01 * 11) and third["epochs"] == 4
    train(Progress(run, show=False))  # a finished checkpoint whose event is there: nothing logged twice
    assert [e["epoch"] for e in run.read_events() if e.get("kind") == "epoch"] == [1, 2, 3, 4]


def _record(method, calls: list):
    def wrapper(stage: str, total: int, **kwargs):
        calls.append((stage, total, kwargs.get("done", 0)))
        return method(stage, total, **kwargs)

    return wrapper


def test_a_stage_in_two_parts_shows_one_count(tmp_path: Path) -> None:
    import torch

    from engine.train.loop import Rng, run_epochs

    run = RunDir(tmp_path)
    p = Progress(run, show=False)
    p.stage_start = _record(p.stage_start, calls := [])
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    common = dict(n=8, batch_size=4, step=lambda index, g: 0.1, modules={"net": net, "opt": opt}, progress=p)
    run_epochs(stage="head", epochs=2, rng=Rng.for_stream(0, "head/warmup", "cpu"),
               last_ckpt=run.checkpoint("head", last=True), span=Span(after=6), **common)
    run_epochs(stage="head", epochs=3, rng=Rng.for_stream(0, "head/full", "cpu"),
               last_ckpt=run.checkpoint("head_full", last=True), span=Span(before=4), **common)
    assert calls == [("head", 10, 0), ("head", 10, 4)]  # part 2 goes on from part 1's 4 of 10 steps
    status = run.read_status()
    assert status["step"] == 10 and status["total"] == 10
    head = [e["state"] for e in run.read_events() if e.get("kind") == "stage" and e["stage"] == "head"]
    assert head == ["start", "done"]


def test_stages_done_earlier_or_off_count_as_finished(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    p = Progress(run, show=False)
    names = ("prepare", "pretrain", "warmup", "train", "predict", "split", "embed")
    p.begin_phase("fit", {n: "waiting" for n in names}, [])
    p.stage_skipped("prepare", "decoded cache is up to date", done=True)
    p.stage_skipped("pretrain", "pre-training is off (--no-pretrain)")
    p.stage_start("warmup", total=2)
    assert {s["stage"]: s["state"] for s in run.read_status()["stages"]} == {
        "prepare": "done", "pretrain": "skipped", "warmup": "running", "train": "waiting", "predict": "waiting",
        "split": "waiting", "embed": "waiting"}
    p.advance(2)
    for name in names[3:]:
        p.stage_start(name, total=1)
        p.advance(1)
    p.stage_end()
    states = [s["state"] for s in run.read_status()["stages"]]
    assert states == ["done", "skipped", "done", "done", "done", "done", "done"]
    assert sum(s in ("done", "skipped") for s in states) == len(names)  # "7 of 7 stages done"


def test_a_stopped_stage_waits_for_resume(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    p = Progress(run, show=False)
    p.begin_phase("fit", {"train": "waiting", "predict": "waiting"}, [])
    p.stage_start("train", total=5)
    p.stage_end("cancelled")
    assert [s["state"] for s in run.read_status()["stages"]] == ["waiting", "waiting"]


def test_the_run_eta_adds_the_planned_work_at_the_measured_throughput(tmp_path: Path, clock: Clock) -> None:
    run = RunDir(tmp_path)
    p = Progress(run, show=False, clock=clock)
    plan = [Planned("pretrain", passes=100 * 10 * 2 * 3.0, passes_per_image=3.0),  # 100 steps of 10 images x 2 views
            Planned("warmup", passes=600.0, passes_per_image=None),
            Planned("train", passes=12_000.0, passes_per_image=3.0),
            Planned("split", passes=0.0, passes_per_image=None)]
    p.begin_phase("fit", {"pretrain": "waiting", "warmup": "waiting", "train": "waiting", "split": "waiting"}, plan)
    p.stage_start("pretrain", total=100)
    assert p.run_eta_s() is None  # nothing measured yet
    steps(p, clock, 20, seconds=2.0, images=20)  # 10 images/s = 30 passes/s
    # this stage: 80 steps x 2 s; then (600 + 12,000) passes at 30 passes/s
    assert p.run_eta_s() == pytest.approx(160 + 12_600 / 30)
    assert run.read_status()["run_eta_s"] == pytest.approx(160 + 12_600 / 30)
    steps(p, clock, 80, seconds=2.0, images=20)
    p.stage_start("warmup", total=4)  # the head on frozen features has no throughput of its own:
    steps(p, clock, 2, seconds=0.5, images=1000)  # its images/s would say nothing about training
    assert p.run_eta_s() == pytest.approx(2 * 0.5 + 12_000 / 30)
    p.stage_end()
    assert p.run_eta_s() == pytest.approx(12_000 / 30)


def test_the_terminal_bar_shows_the_run_eta(tmp_path: Path, clock: Clock, capsys) -> None:
    p = Progress(None, show=True, clock=clock)
    p.begin_phase("fit", {"train": "waiting"}, [Planned("train", passes=3000.0, passes_per_image=3.0)])
    p.stage_start("train", total=10)
    steps(p, clock, 3, seconds=1.0, images=100)
    p.stage_end()
    assert "run ETA=7s" in capsys.readouterr().err
