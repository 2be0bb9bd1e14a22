"""Cached readers of run artifacts.

Artifacts the worker writes once (samples.csv, umap.npy) are cached keyed by (path, mtime, size): the
engine replaces them atomically, so a new mtime means a new file and the old entry is simply never hit
again (`max_entries` bounds the memory). Files the worker is still appending to (events.jsonl,
status.json) and the decision store are read fresh on every rerun; they are small or indexed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from engine import config as config_mod
from engine.config import RunConfig
from engine.errors import UserError
from engine.review import queue
from engine.review.decisions import load_decisions
from engine.review.findings import evidence_of
from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir
from ui import review

# Text columns of samples.csv: read as str so class names such as "0" or "NA" stay names.
_TEXT_COLUMNS = ("id", "path", "given_label", "predicted_label", "suggested_label", "top1_label", "top2_label",
                 "top3_label", "true_label")


def file_key(path: Path) -> tuple[float, int]:
    """(mtime, size) of a file, or (-1, -1) when it does not exist: the cache key of its content."""
    try:
        st_ = os.stat(path)
        return st_.st_mtime, st_.st_size
    except OSError:
        return -1.0, -1


def read_samples_csv(path: Path) -> pd.DataFrame:
    """samples.csv as a DataFrame (uncached; label columns as text, `flagged` as bool)."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in _TEXT_COLUMNS if c in header}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in header if c not in dtypes})
    if "flagged" in df:
        df["flagged"] = df["flagged"].fillna(0).astype(int).astype(bool)
    return df.assign(**evidence_of(df))  # duplicates and outliers: defaults for runs written before them


@st.cache_data(max_entries=8, show_spinner=False)
def _samples(path: str, key: tuple[float, int]) -> pd.DataFrame:
    return read_samples_csv(Path(path))


def samples(run: RunDir, *, phase_a: bool = False) -> pd.DataFrame | None:
    """The run's samples.csv (or samples_phase_a.csv), cached by mtime; None while it does not exist."""
    path = run.samples_before if phase_a else run.samples
    key = file_key(path)
    if key[0] < 0:
        return None
    return _samples(str(path), key)


@st.cache_data(max_entries=4, show_spinner=False)
def _umap(path: str, key: tuple[float, int]) -> np.ndarray:
    return np.load(path).astype(np.float32, copy=False)


def umap_coords(run: RunDir, n: int | None = None) -> np.ndarray | None:
    """(N, 2) map coordinates, or None when missing or not aligned with samples.csv (N rows)."""
    key = file_key(run.umap)
    if key[0] < 0:
        return None
    try:
        coords = _umap(str(run.umap), key)
    except (OSError, ValueError):
        return None
    if coords.ndim != 2 or coords.shape[1] != 2 or (n is not None and coords.shape[0] != n):
        return None
    return coords


def json_file(path: Path) -> dict[str, Any] | None:
    data = read_json(path, default=None)
    return data if isinstance(data, dict) else None


def source_info(run: RunDir) -> dict[str, Any]:
    return json_file(run.source) or {}


def image_root(run: RunDir) -> Path | None:
    """The folder samples.csv paths are relative to."""
    root = source_info(run).get("root")
    return Path(root) if root else None


def class_names(run: RunDir, frame: pd.DataFrame | None = None) -> list[str]:
    """Class names in the engine's order (source.json), else sorted given labels."""
    classes = source_info(run).get("classes")
    if classes:
        return [str(c) for c in classes]
    if frame is not None and "given_label" in frame:
        return sorted(frame["given_label"].unique().tolist())
    return []


def decisions_frame(run: RunDir, *, include_skipped: bool = False) -> pd.DataFrame:
    """Current review decisions: columns path, action, label, decided_at, source (read fresh: other tabs
    write too); skips ("unsure") only with `include_skipped`, as training and export leave them out."""
    decisions = load_decisions(run.decisions, include_skipped=include_skipped)
    return pd.DataFrame(
        [(d.path, d.action, d.label, d.decided_at, d.source) for d in decisions.values()],
        columns=["path", "action", "label", "decided_at", "source"],
    )


def run_config(run: RunDir) -> RunConfig:
    """The run's settings (config.json); the defaults where it has none or it cannot be read."""
    try:
        return config_mod.load(run.config) if run.config.exists() else RunConfig()
    except UserError:
        return RunConfig()


# ----------------------------------------------------------------------------- the review queue's inputs


@st.cache_data(max_entries=8, show_spinner=False)
def _review_samples(samples_path: str, key: tuple, run_path: str) -> pd.DataFrame:
    frame = read_samples_csv(Path(samples_path))
    digest = queue.samples_digest(Path(samples_path).read_bytes())
    frame = queue.with_rerank(frame, queue.current_rerank(Path(run_path), digest, frame["path"]))
    frame["loss_pct"] = review.loss_percentiles(frame)
    return frame


def review_samples(run: RunDir) -> pd.DataFrame | None:
    """samples.csv as the Review page shows it: the re-ranked suggestion, top-3 and suspicion where the
    run has a current re-ranking (engine.review.queue), and `loss_pct`, the loss percentile in the class."""
    key = (file_key(run.samples), file_key(run.rerank), file_key(run.rerank_meta))
    if key[0][0] < 0:
        return None
    return _review_samples(str(run.samples), key, str(run.path))


def rerank_record(run: RunDir) -> dict[str, Any] | None:
    """rerank.json: when and with how many decisions the queue was last re-ranked, or why that failed."""
    return json_file(run.rerank_meta)


@st.cache_data(max_entries=4, show_spinner=False)
def _rerank_frame(run_path: str, key: tuple) -> pd.DataFrame | None:
    run = RunDir(Path(run_path))
    paths = read_samples_csv(run.samples)["path"]
    return queue.current_rerank(run.path, queue.samples_digest(run.samples.read_bytes()), paths)


def current_rerank(run: RunDir) -> pd.DataFrame | None:
    """The run's re-ranking when it belongs to its current samples.csv (cached by the files' state)."""
    key = (file_key(run.samples), file_key(run.rerank), file_key(run.rerank_meta))
    return _rerank_frame(str(run.path), key) if key[0][0] >= 0 else None


@st.cache_data(max_entries=4, show_spinner=False)
def _neighbours(path: str, key: tuple[float, int]) -> np.ndarray:
    return np.load(path)


def neighbours(run: RunDir, n: int) -> np.ndarray | None:
    """(n, 5) int rows of samples.csv nearest to each image, or None when missing or not aligned."""
    key = file_key(run.neighbours)
    if key[0] < 0:
        return None
    try:
        rows = _neighbours(str(run.neighbours), key)
    except (OSError, ValueError):
        return None
    return rows if rows.ndim == 2 and rows.shape[0] == n else None
