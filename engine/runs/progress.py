"""Progress: one tqdm bar per stage on the terminal, and the same numbers in status.json/events.jsonl.

Training loops only see the small `Progress` interface, so they stay testable with `Progress.silent()`.
status.json is rewritten at most once a second (atomic), so the app can poll it while training runs.

What status.json says, and how it is estimated:

* `stage`, `step`/`total`: the stage running now and its count. A resumed stage continues its count
  (33/48 after a kill in epoch 3 of 4, not 0/16), and a stage trained in parts (the head) shows one
  count across them (`Span`).
* `stages`: every stage of the phase with its state — waiting, running, done (now or in an earlier
  invocation) or skipped (off in these settings) — so "N of M stages done" counts what is finished
  whichever way it finished.
* `images_per_s` and `eta_s`: from the last `RATE_WINDOW_S` seconds of this stage, not from its start:
  a machine that got busier (or freer) shows in the estimate within half a minute.
* `run_eta_s`: the ETA of the whole invocation = this stage's ETA + the work of the stages still to
  run ÷ the recent throughput. Work is counted in image passes (`Planned`): a training step costs 3
  passes per image view it sees (forward and backward), scoring an image costs 1; the mixture and
  the map take seconds and are not counted. The throughput is the recent images/s of the running
  stage times its cost per image, or, while a stage without one runs (decoding, the head on frozen
  features, the mixture), the last one measured. None until a network stage has run for a moment.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from engine.runs.rundir import RunDir

_STATUS_EVERY_S = 1.0
RATE_WINDOW_S = 30.0
TRAIN_PASSES = 3.0  # image passes per image view of a training step: forward + backward (about 2 forwards)
SCORE_PASSES = 1.0  # one forward pass per image


class Cancelled(Exception):
    """The worker received SIGTERM/SIGINT; the caller saves state and exits as 'cancelled'."""


@dataclass(frozen=True)
class Span:
    """Where one loop's steps sit in its stage's count: `before` steps came earlier, `after` come later."""

    before: int = 0
    after: int = 0


WHOLE = Span()  # a loop that is its stage's whole count


@dataclass(frozen=True)
class Planned:
    """A stage still to run: its work in image passes, and its cost per image it reports (None: it has no
    network throughput of its own, e.g. decoding or the head on frozen features)."""

    stage: str
    passes: float
    passes_per_image: float | None


@dataclass
class _Bar:
    stage: str
    total: int
    unit: str
    done: int
    clock: Callable[[], float]
    started: float = 0.0
    samples: deque = field(default_factory=deque)  # (time, done, images) in the last RATE_WINDOW_S
    images: int = 0
    last_status: float = float("-inf")
    tqdm: Any = None

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.samples.append((self.started, self.done, 0))

    def record(self) -> None:
        now = self.clock()
        self.samples.append((now, self.done, self.images))
        # Keep one sample older than the window, so the rate always spans at least the whole window.
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def rates(self) -> tuple[float, float] | None:
        """(steps/s, images/s) over the recent window, or None before any progress."""
        (t0, d0, i0), (t1, d1, i1) = self.samples[0], self.samples[-1]
        if d1 <= d0 or t1 <= t0:
            return None
        return (d1 - d0) / (t1 - t0), (i1 - i0) / (t1 - t0)


class Progress:
    def __init__(self, run: RunDir | None, *, show: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.run = run
        self.show = show
        self.clock = clock
        self._bar: _Bar | None = None
        self._stop_requested = False
        self._states: dict[str, str] = {}  # the phase's stages -> waiting | running | done | skipped
        self._plan: dict[str, Planned] = {}
        self._passes_per_s: float | None = None  # the last network throughput measured

    @classmethod
    def silent(cls) -> Progress:
        return cls(None, show=False)

    # ------------------------------------------------------------ cancellation
    def install_signal_handlers(self) -> None:
        """SIGTERM (the app's Stop) and SIGINT end the run at the next batch boundary."""

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested:  # asked twice (a stage that never reaches a batch boundary): stop now
                raise KeyboardInterrupt
            self._stop_requested = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def check_cancelled(self) -> None:
        if self._stop_requested:
            raise Cancelled("stopped by request")

    # ------------------------------------------------------------ the phase
    def begin_phase(self, phase: str, states: dict[str, str], plan: list[Planned]) -> None:
        """The stages of `phase` with their state as it starts, and the work still to run (for run_eta_s)."""
        self._states = dict(states)
        self._plan = {p.stage: p for p in plan}
        if self.run:
            self.run.write_status(phase=phase, stages=self._stage_list(), run_eta_s=None)

    def _set_state(self, stage: str, state: str) -> None:
        if stage in self._states:
            self._states[stage] = state
        if state in ("done", "skipped"):
            self._plan.pop(stage, None)

    def _stage_list(self) -> list[dict[str, str]]:
        return [{"stage": s, "state": state} for s, state in self._states.items()]

    # ------------------------------------------------------------ stages
    def stage_start(self, stage: str, total: int, *, unit: str = "batch", message: str = "", done: int = 0) -> None:
        """Start (or, for the next part of the stage running now, continue) the count of `stage`.

        done: steps already done before this process started (a resumed stage) or in its earlier parts.
        """
        bar = self._bar
        if bar is not None and bar.stage == stage:  # the next part of a stage trained in parts
            bar.total, bar.done = max(int(total), 1), int(done)
            bar.record()
            if bar.tqdm is not None:
                bar.tqdm.total, bar.tqdm.n = bar.total, bar.done
                bar.tqdm.refresh()
            if self.run:
                self.run.write_status(step=bar.done, total=bar.total, **({"message": message} if message else {}))
            return
        self.stage_end()
        bar = _Bar(stage, max(int(total), 1), unit, min(int(done), max(int(total), 1)), self.clock)
        if self.show:
            bar.tqdm = tqdm(total=bar.total, initial=bar.done, desc=f"{stage:>8}", unit=unit, file=sys.stderr,
                            dynamic_ncols=True, leave=True, mininterval=0.5)
        self._bar = bar
        self._set_state(stage, "running")
        if self.run:
            self.run.append_event(kind="stage", stage=stage, state="start", **({"step": bar.done} if bar.done else {}))
            self.run.write_status(stage=stage, step=bar.done, total=bar.total, message=message or f"{stage} started",
                                  images_per_s=None, eta_s=None, run_eta_s=self.run_eta_s(),
                                  stages=self._stage_list())

    def advance(self, n: int = 1, *, images: int = 0, **postfix: float) -> None:
        """Advance the current stage by n units that covered `images` images."""
        self.check_cancelled()
        bar = self._bar
        if bar is None:
            return
        bar.done += n
        bar.images += images
        bar.record()
        self._measure_throughput()
        if bar.tqdm is not None:
            bar.tqdm.update(n)
            shown = {k: f"{v:.4g}" for k, v in postfix.items()}
            if images:
                shown["img/s"] = f"{self.images_per_s():.0f}"
            run_eta = self.run_eta_s()
            if run_eta is not None:
                shown["run ETA"] = _short_time(run_eta)
            if shown:
                bar.tqdm.set_postfix(shown, refresh=False)
        now = self.clock()
        if self.run and (now - bar.last_status >= _STATUS_EVERY_S or bar.done >= bar.total):
            bar.last_status = now
            msg = ", ".join(f"{k} {v:.4g}" for k, v in postfix.items())
            self.run.write_status(step=bar.done, total=bar.total, message=msg or bar.stage,
                                  images_per_s=round(self.images_per_s(), 1), eta_s=self.eta_s(),
                                  run_eta_s=self.run_eta_s())

    def images_per_s(self) -> float:
        """Images per second over the last RATE_WINDOW_S seconds of the stage running now."""
        rates = self._bar.rates() if self._bar is not None else None
        return rates[1] if rates else 0.0

    def eta_s(self) -> float | None:
        """Seconds until the stage running now ends, at its recent rate."""
        bar = self._bar
        rates = bar.rates() if bar is not None else None
        if bar is None or rates is None:
            return None
        return round(max(bar.total - bar.done, 0) / rates[0], 1)

    def run_eta_s(self) -> float | None:
        """Seconds until this invocation ends: this stage's ETA + the planned work left ÷ the throughput."""
        if self._passes_per_s is None:
            return None
        stage_eta = self.eta_s() if self._bar is not None else 0.0
        current = self._bar.stage if self._bar is not None else None
        later = sum(p.passes for name, p in self._plan.items() if name != current)
        if stage_eta is None:  # the current stage has no rate yet: count its planned work instead
            stage_eta = self._plan[current].passes / self._passes_per_s if current in self._plan else 0.0
        return round(stage_eta + later / self._passes_per_s, 1)

    def _measure_throughput(self) -> None:
        bar = self._bar
        planned = self._plan.get(bar.stage) if bar is not None else None
        if bar is None or planned is None or planned.passes_per_image is None:
            return
        rates = bar.rates()
        if rates is not None and rates[1] > 0:
            self._passes_per_s = rates[1] * planned.passes_per_image

    def stage_end(self, state: str = "done") -> float:
        bar, self._bar = self._bar, None
        if bar is None:
            return 0.0
        seconds = self.clock() - bar.started
        if bar.tqdm is not None:
            bar.tqdm.close()
        # A stage stopped or failed half-way is not done: it waits for --resume.
        self._set_state(bar.stage, "done" if state == "done" else "waiting")
        if self.run:
            self.run.append_event(kind="stage", stage=bar.stage, state=state, seconds=round(seconds, 2))
            self.run.write_status(stages=self._stage_list(), run_eta_s=self.run_eta_s())
        return seconds

    def stage_skipped(self, stage: str, why: str, *, done: bool = False) -> None:
        """A stage that does not run: off in these settings, or (done=True) finished by an earlier invocation."""
        if self.show:
            print(f"{stage:>8}: skipped ({why})", file=sys.stderr)
        self._set_state(stage, "done" if done else "skipped")
        if self.run:
            self.run.append_event(kind="stage", stage=stage, state="skipped", message=why)
            self.run.write_status(stages=self._stage_list())

    # ------------------------------------------------------------ events
    def epoch(self, stage: str, epoch: int, epochs: int, **metrics: float) -> None:
        if self.run:
            self.run.append_event(kind="epoch", stage=stage, epoch=epoch, epochs=epochs,
                                  **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        if self.show and self._bar is not None and self._bar.tqdm is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            self._bar.tqdm.write(f"{stage:>8} epoch {epoch}/{epochs}: {shown}", file=sys.stderr)

    def note(self, message: str) -> None:
        if self.show:
            print(message, file=sys.stderr)
        if self.run:
            self.run.write_status(message=message)


def _short_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
