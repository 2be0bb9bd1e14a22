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

from engine.review.decisions import load_decisions
from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir

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
    return df


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


def decisions_frame(run: RunDir) -> pd.DataFrame:
    """Current review decisions: columns path, action, label, decided_at (read fresh: other tabs write too)."""
    decisions = load_decisions(run.decisions)
    return pd.DataFrame(
        [(d.path, d.action, d.label, d.decided_at) for d in decisions.values()],
        columns=["path", "action", "label", "decided_at"],
    )
