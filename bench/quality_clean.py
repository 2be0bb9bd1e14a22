"""CLeaN runs of bench/quality.py: `python -m engine fit` through the engine's own command line, in this
process, with label-free pre-training shared between runs on the same images and an optional deadline.

The engine is called as engine.cli.main(argv): the interpreter start and the torch import are paid once,
as for cleanlab and kNN, and each row records the equivalent `python -m engine fit ...` command. After
the fit, `python -m engine export RUN --out F --format csv` writes the labels a user would get, and that
file is what the "labels right" columns score (bench/quality_labels.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.quality_data import CaseData
from bench.quality_labels import export_command, phase_a_view, score_export
from bench.quality_methods import FIT_FLAGS, LABELS, Row, Settings, release_memory

# The benchmark has no reviewer: phase (b) is measured as it runs without decisions, which the defaults
# no longer do (finetune.require_decisions) — the row says what a user who lifts the rule would get.
FINETUNE_WITHOUT_DECISIONS = ["--finetune", "--set", "finetune.require_decisions=false"]


@dataclass
class PretrainPool:
    """Pre-trained encoders by image set. SimCLR never sees labels, so every CLeaN run on the same images
    and settings can start from one pre-training. For the variants of one case (same folder, same image
    order) on a CPU it is bit-for-bit the pre-training they would have run themselves (seeded; checked:
    identical weights and scores); for another noise setting of the same images the folders, hence the
    image order, differ, so it is an equally good but not identical pre-training."""

    done: dict[str, tuple[Path, float]] = field(default_factory=dict)  # images -> (pretrain.pt, seconds)


@dataclass
class Deadline:
    """Optional time limit of a whole invocation: no method starts after it, and a fit still running
    at the limit is stopped the way the app stops one (SIGTERM: it saves a checkpoint and exits)."""

    at: float | None = None  # time.monotonic() value, None = no limit
    fired: bool = False

    def left(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()


# ============================================================================================ CLeaN runs


def fit_argv(data: CaseData, run: Path, s: Settings, image_size: int | None) -> list[str]:
    """`fit` arguments shared by every CLeaN variant (the method adds --loss / --no-pretrain / --finetune)."""
    argv = ["fit", str(data.train), "--run-dir", str(run), "--truth", str(data.truth), "--seed", str(s.seed),
            "--device", s.device]
    if data.test is not None:
        argv += ["--test", str(data.test)]
    for flag, value in (("--pretrain-epochs", s.pretrain_epochs), ("--epochs", s.epochs),
                        ("--image-size", image_size), ("--batch-size", s.batch_size)):
        if value is not None:
            argv += [flag, str(value)]
    for item in s.sets:
        argv += ["--set", item]
    return argv + (["--quiet"] if s.quiet else [])


def resolved_config(argv: list[str]) -> Any:
    """The RunConfig `python -m engine fit <argv>` would run with (same parser, same resolution)."""
    from engine.cli import build_parser
    from engine.cli import run as cli_run
    from engine.config import AUTO_SIZE
    from engine.data.intake import scan

    args = build_parser().parse_args(argv)
    cfg = cli_run.fit_config(args)  # the fit command's own resolution
    if cfg.data.image_size == AUTO_SIZE:  # the size the run will choose from its images (engine.data.working_size)
        cfg, _ = cli_run.working_size_of(cfg, scan(Path(args.data), check="header"))
    return cfg


@contextmanager
def _engine_signals(deadline: Deadline) -> Iterator[None]:
    """The engine installs SIGINT/SIGTERM handlers for its run; put ours back afterwards, and at the
    deadline stop the run with SIGTERM, as the app's Stop button does."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    left = deadline.left()
    timer = None
    if left is not None:
        def stop() -> None:
            deadline.fired = True
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(max(left, 0.0), stop)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def call_engine(argv: list[str], deadline: Deadline, *, skip_map: bool = False) -> int:
    from engine.cli import main

    if skip_map:  # the picture is not scored, and costs ~40 s per run at 5,000 images on two cores
        argv = [*argv, "--set", "embed.enabled=false"]
    with _engine_signals(deadline):
        return main(argv)


def run_clean(key: str, data: CaseData, run: Path, s: Settings, *, image_size: int | None, images: str,
              pool: PretrainPool, deadline: Deadline, say: Callable[[str], None] = print) -> list[Row]:
    """One CLeaN variant in a fresh run folder; rows for phase (a) and, for `clean`, phase (b)."""
    from engine.runs import owner
    from engine.runs.rundir import RunDir

    shutil.rmtree(run, ignore_errors=True)  # a finished run would be skipped stage by stage: start afresh
    finetune = key == "clean" and s.finetune
    argv = fit_argv(data, run, s, image_size) + FIT_FLAGS[key] + (FINETUNE_WITHOUT_DECISIONS if finetune else [])
    command = "python -m engine " + shlex.join(argv)
    shared, ckpt = 0.0, None
    if key != "no-pretrain" and s.share_pretrain and images in pool.done:
        ckpt, shared = pool.done[images]
        owner.claim(RunDir(run))  # a run folder CLeaN made, then seeded with the shared pre-training
        RunDir(run).checkpoint("pretrain").parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ckpt, RunDir(run).checkpoint("pretrain"))
        RunDir(run).mark_stage_done("pretrain")  # the one "done" rule: recorded, and its file in place
    say(f"   {command}" + (f"  (reusing the pre-trained encoder {ckpt})" if shared else ""))
    t0 = time.perf_counter()
    rc = call_engine(argv, deadline, skip_map=s.skip_map)
    wall = time.perf_counter() - t0
    release_memory()
    name = LABELS[key]
    if rc != 0:
        if rc == 130 and not deadline.fired:
            raise KeyboardInterrupt
        why = "stopped at the time limit" if deadline.fired else f"engine fit exited with code {rc}"
        return [Row(name, key, error=why, command=command, wall_seconds=wall)]
    t = run_timings(RunDir(run).read_events())
    if s.share_pretrain and key != "no-pretrain" and images not in pool.done and t["pretrain"] > 0:
        pool.done[images] = (RunDir(run).checkpoint("pretrain"), t["pretrain"])
    note = f"incl. {shared:.0f} s of shared pre-training" if shared else ""
    seconds_a = t["prepare"] + t["fit"] - t["embed_fit"] + shared
    phase_a = run / "metrics_phase_a.json" if finetune else run / "metrics.json"
    wall += shared
    exports = run.parent / "exports"
    # Phase (a)'s labels as `export` gives them after a `fit` without --finetune (quality_labels.phase_a_view).
    run_a = phase_a_view(run, exports / f"{key}-phase-a-run") if finetune else run
    rows = [Row(f"{name}, after (a)", key, _read_json(phase_a), t.get("test_fit"), round(seconds_a, 1),
                round(wall, 1), note, command, export=export_and_score(run_a, exports / f"{key}-a.csv", data))]
    if finetune:
        seconds_b = seconds_a + t["finetune"] - t["embed_finetune"]
        rows.append(Row(f"{name}, after (b)", key, _read_json(run / "metrics.json"), t.get("test_finetune"),
                        round(seconds_b, 1), round(wall, 1), note, command,
                        export=export_and_score(run, exports / f"{key}-b.csv", data)))
    return rows


def export_and_score(run: Path, out: Path, data: CaseData) -> dict[str, Any]:
    """`python -m engine export RUN --out OUT --format csv`, then the scores of that file (with the
    export's file and command, so a reader can open what was scored)."""
    from engine.cli import main
    from engine.runs.rundir import RunDir

    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a fresh file, as the app writes it: no --overwrite
    argv = export_command(run, out)
    if main(argv) != 0:
        raise RuntimeError(f"`python -m engine {shlex.join(argv)}` failed")
    return {**score_export(RunDir(run).samples, out, data.truth), "file": str(out),
            "command": "python -m engine " + shlex.join(argv)}


def run_timings(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage and phase seconds of a run from its events.jsonl (phase = fit until the fit summary)."""
    t: dict[str, Any] = {"prepare": 0.0, "pretrain": 0.0, "fit": 0.0, "finetune": 0.0, "embed_fit": 0.0,
                         "embed_finetune": 0.0}
    phase = "fit"
    for e in events:
        if e.get("kind") == "summary":
            t[e["phase"]] = float(e.get("seconds") or 0.0)
            if e.get("test_acc") is not None:
                t[f"test_{e['phase']}"] = float(e["test_acc"])
            phase = "finetune"
        elif e.get("kind") == "stage" and e.get("state") == "done":
            stage = e.get("stage")
            seconds = float(e.get("seconds") or 0.0)
            if stage == "embed":
                t[f"embed_{phase}"] += seconds
            elif stage in ("prepare", "pretrain") and phase == "fit":
                t[stage] += seconds
    return t


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
