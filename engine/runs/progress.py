"""Progress: one tqdm bar per stage on the terminal, and the same numbers in status.json/events.jsonl.

Training loops only see the small `Progress` interface, so they stay testable with `Progress.silent()`.
status.json is rewritten at most once a second (atomic), so the app can poll it while training runs.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from engine.runs.rundir import RunDir

_STATUS_EVERY_S = 1.0


class Cancelled(Exception):
    """The worker received SIGTERM/SIGINT; the caller saves state and exits as 'cancelled'."""


@dataclass
class _Bar:
    stage: str
    total: int
    unit: str
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    images: int = 0
    last_status: float = 0.0
    tqdm: Any = None


class Progress:
    def __init__(self, run: RunDir | None, *, show: bool = True) -> None:
        self.run = run
        self.show = show
        self._bar: _Bar | None = None
        self._stop_requested = False

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

    # ------------------------------------------------------------ stages
    def stage_start(self, stage: str, total: int, *, unit: str = "batch", message: str = "") -> None:
        self.stage_end()
        bar = _Bar(stage, max(int(total), 1), unit)
        if self.show:
            bar.tqdm = tqdm(total=bar.total, desc=f"{stage:>8}", unit=unit, file=sys.stderr, dynamic_ncols=True,
                            leave=True, mininterval=0.5)
        self._bar = bar
        if self.run:
            self.run.append_event(kind="stage", stage=stage, state="start")
            self.run.write_status(stage=stage, step=0, total=bar.total, message=message or f"{stage} started",
                                  images_per_s=None, eta_s=None)

    def advance(self, n: int = 1, *, images: int = 0, **postfix: float) -> None:
        """Advance the current stage by n units that covered `images` images."""
        self.check_cancelled()
        bar = self._bar
        if bar is None:
            return
        bar.done += n
        bar.images += images
        if bar.tqdm is not None:
            bar.tqdm.update(n)
            if postfix or images:
                shown = {k: f"{v:.4g}" for k, v in postfix.items()}
                if images:
                    shown["img/s"] = f"{self.images_per_s():.0f}"
                bar.tqdm.set_postfix(shown, refresh=False)
        now = time.perf_counter()
        if self.run and (now - bar.last_status >= _STATUS_EVERY_S or bar.done >= bar.total):
            bar.last_status = now
            msg = ", ".join(f"{k} {v:.4g}" for k, v in postfix.items())
            self.run.write_status(step=bar.done, total=bar.total, message=msg or bar.stage,
                                  images_per_s=round(self.images_per_s(), 1), eta_s=self.eta_s())

    def images_per_s(self) -> float:
        bar = self._bar
        if bar is None:
            return 0.0
        return bar.images / max(time.perf_counter() - bar.started, 1e-9)

    def eta_s(self) -> float | None:
        bar = self._bar
        if bar is None or bar.done == 0:
            return None
        elapsed = time.perf_counter() - bar.started
        return round(elapsed / bar.done * (bar.total - bar.done), 1)

    def stage_end(self, state: str = "done") -> float:
        bar, self._bar = self._bar, None
        if bar is None:
            return 0.0
        seconds = time.perf_counter() - bar.started
        if bar.tqdm is not None:
            bar.tqdm.close()
        if self.run:
            self.run.append_event(kind="stage", stage=bar.stage, state=state, seconds=round(seconds, 2))
        return seconds

    def stage_skipped(self, stage: str, why: str) -> None:
        if self.show:
            print(f"{stage:>8}: skipped ({why})", file=sys.stderr)
        if self.run:
            self.run.append_event(kind="stage", stage=stage, state="skipped", message=why)

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
