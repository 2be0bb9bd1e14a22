"""A run is a folder; disk is the source of truth.

Layout of `RUN/` (all writes atomic: temp file + os.replace, so a reader polling while training never
sees half a file):

    .clean-run         the marker: this folder is a CLeaN run (run format, creation time); written when
                       the run is created, before anything else (engine.runs.owner)
    config.json        the full RunConfig, written once
    source.json        where the data came from (data path, kind, truth/test files)
    status.json        state, stage, step/total, message, ETAs, stages, updated_at, pid, completed_stages
    .worker.lock       flock()ed by the run's worker while it lives (engine.runs.worker_lock)
    launch.json        the command the app ran and the worker's pid
    events.jsonl       one JSON object per epoch / stage event
    worker.log         stdout+stderr of a run started by the app
    data/              manifest.csv, images.npy (decoded uint8 cache), intake.json, sha256.csv (image hashes)
    checkpoints/       <stage>.pt (finished stage) and <stage>.last.pt (resume point), weights_only
    predictions.npz    phase (a)/(b) outputs per image (probs, loss history, features)
    samples.csv        one row per image (see README "Run folder")
    split.json         the fitted mixture (for the loss histogram overlay)
    umap.npy           (N, 2) float32 embedding map, rows aligned with samples.csv
    neighbours.npy     (N, 5) int32 nearest images in the feature space, rows aligned with samples.csv
    rerank.csv         the review queue re-ranked with the decisions (engine.method.rerank); rerank.json: its record
    decisions.sqlite   human review decisions (engine.decisions)
    metrics.json       detection metrics when a truth file is known

A run folder belongs to CLeaN (engine.runs.owner): the engine writes, replaces and deletes only the
files named here (and their temp files), and only in a folder that carries the marker.

This module imports no torch: the app reads runs through it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.runs.atomic import DamagedFile, _json_default, atomic_write_json, load_json, now_iso, read_json

RUN_FORMAT = 1  # the layout version in the marker; a run of a newer format is refused, never rewritten
# The properties below that name folders; every other Path property names one file.
FOLDERS = ("data", "checkpoints", "source_dir", "test_source", "test_data")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- paths
    @property
    def marker(self) -> Path:
        """The sign that CLeaN made this folder: `{"clean_run": RUN_FORMAT, "created_at": ...}`."""
        return self.path / ".clean-run"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def source(self) -> Path:
        return self.path / "source.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "worker.log"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def hashes(self) -> Path:
        """sha256 of every image file (engine.review.hashes): the content key of review decisions."""
        return self.data / "sha256.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.npz"

    @property
    def samples(self) -> Path:
        return self.path / "samples.csv"

    @property
    def samples_before(self) -> Path:
        """samples.csv as it was after phase (a), kept when phase (b) rewrites samples.csv."""
        return self.path / "samples_phase_a.csv"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def umap(self) -> Path:
        return self.path / "umap.npy"

    @property
    def neighbours(self) -> Path:
        """(N, 5) int32: the rows of samples.csv nearest to each image in the feature space (cosine)."""
        return self.path / "neighbours.npy"

    @property
    def rerank(self) -> Path:
        """Suggestions and suspicion of every image from a head refitted with the review decisions."""
        return self.path / "rerank.csv"

    @property
    def rerank_meta(self) -> Path:
        """What the last re-ranking was made from (decisions, the samples.csv it belongs to), or its failure."""
        return self.path / "rerank.json"

    @property
    def rerank_lock(self) -> Path:
        """flock()ed by a re-ranking while it runs: one at a time per run."""
        return self.path / ".rerank.lock"

    @property
    def rerank_log(self) -> Path:
        """The output of re-rankings the app started."""
        return self.path / "rerank.log"

    @property
    def decisions(self) -> Path:
        return self.path / "decisions.sqlite"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def launch(self) -> Path:
        """The exact command the app ran (engine.runs.jobs), for the record and for resume."""
        return self.path / "launch.json"

    @property
    def worker_lock(self) -> Path:
        """flock()ed by the run's one worker for its lifetime; the OS frees it when the worker dies."""
        return self.path / ".worker.lock"

    @property
    def source_dir(self) -> Path:
        """A zipped DATA, extracted inside the run."""
        return self.path / "source"

    @property
    def test_source(self) -> Path:
        """A zipped --test set, extracted inside the run."""
        return self.path / "test_source"

    @property
    def test_data(self) -> Path:
        """The decoded cache of the --test set."""
        return self.path / "test_data"

    @property
    def loss_history(self) -> Path:
        """Per-image losses of the last classifier epochs (the mixture's input), kept across a resume."""
        return self.checkpoints / "train_losses.npz"

    @property
    def predictions_before(self) -> Path:
        """predictions.npz as it was after phase (a), kept when phase (b) rewrites it."""
        return self.path / "predictions_phase_a.npz"

    @property
    def metrics_before(self) -> Path:
        """metrics.json as it was after phase (a), kept when phase (b) rewrites it."""
        return self.path / "metrics_phase_a.json"

    @property
    def finetune_meta(self) -> Path:
        """What phase (b) was started with (the fingerprint of its decisions and settings)."""
        return self.checkpoints / "finetune.json"

    @property
    def config_finetune(self) -> Path:
        """The settings phase (b) ran with, when they differ from config.json."""
        return self.path / "config_finetune.json"

    @property
    def review_selection(self) -> Path:
        """Images picked on the Inspect page for the Review page."""
        return self.path / "review_selection.json"

    def checkpoint(self, stage: str, last: bool = False) -> Path:
        return self.checkpoints / (f"{stage}.last.pt" if last else f"{stage}.pt")

    @staticmethod
    def checkpoint_of(path: Path) -> tuple[str, bool] | None:
        """(stage, last) of a path `checkpoint` names, or None: the inverse of `checkpoint`."""
        name = Path(path).name
        for last, suffix in ((True, ".last.pt"), (False, ".pt")):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name.removesuffix(suffix), last
        return None

    def named_files(self) -> tuple[Path, ...]:
        """Every file of a run named by a property here (checkpoints of stages: engine.runs.stages)."""
        names = [n for n, v in vars(RunDir).items() if isinstance(v, property) and n not in FOLDERS]
        return tuple(getattr(self, n) for n in sorted(names))

    def relative(self, path: Path) -> str:
        """`path` as people see it in messages: relative to the run (checkpoints/train.pt), else as given."""
        try:
            return Path(path).relative_to(self.path).as_posix()
        except ValueError:
            return str(path)

    # ---- status
    def read_status(self) -> dict[str, Any]:
        """status.json, or {} when it is missing or damaged (pollers; `load_status` tells them apart)."""
        status = read_json(self.status_file, default={})
        return status if isinstance(status, dict) else {}

    def load_status(self) -> dict[str, Any]:
        """status.json; {} when there is none. Raises DamagedFile when it is there but unreadable."""
        try:
            status = load_json(self.status_file)
        except FileNotFoundError:
            return {}
        if not isinstance(status, dict):
            raise DamagedFile(self.status_file, f"a JSON {type(status).__name__}, not an object")
        return status

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into status.json. One writer at a time: the holder of the run's worker lock (the
        launcher before the worker exists, then the worker); readers never write it."""
        status = self.read_status()
        status.update(fields)
        status["updated_at"] = now_iso()
        atomic_write_json(self.status_file, status)
        return status

    def completed_stages(self) -> list[str]:
        """The stages recorded as done (engine.runs.stages decides what "done" means)."""
        return list(self.read_status().get("completed_stages", []))

    def mark_stage_done(self, stage: str) -> None:
        done = self.completed_stages()
        if stage not in done:
            done.append(stage)
        self.write_status(completed_stages=done)

    def unmark_stages(self, stages: list[str]) -> None:
        done = [s for s in self.completed_stages() if s not in stages]
        self.write_status(completed_stages=done)

    # ---- events
    def append_event(self, **fields: Any) -> None:
        fields.setdefault("t", round(time.time(), 3))
        line = json.dumps(fields, default=_json_default)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a+b") as f:  # one short append: atomic enough for JSONL
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line torn by a kill -9: end it, so this event stays readable
                    f.write(b"\n")
            f.write((line + "\n").encode("utf-8"))

    def read_events(self) -> list[dict[str, Any]]:
        """The events that can be read; a line cut by a kill -9 (or any line that is not a JSON object)
        is left out, so one bad line never hides the rest."""
        try:
            data = self.events.read_bytes() if self.events.is_file() else b""
        except OSError:
            return []
        out = []
        for line in data.splitlines():
            try:
                event = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
            if isinstance(event, dict):
                out.append(event)
        return out
