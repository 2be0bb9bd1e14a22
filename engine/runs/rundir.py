"""A run is a folder; disk is the source of truth.

Layout of `RUN/` (all writes atomic: temp file + os.replace, so a reader polling while training never
sees half a file):

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

This module imports no torch: the app reads runs through it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.runs.atomic import _json_default, atomic_write_json, now_iso, read_json


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- paths
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

    # ---- status
    def read_status(self) -> dict[str, Any]:
        return read_json(self.status_file, default={}) or {}

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
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill -9 mid-write
                continue
        return out
