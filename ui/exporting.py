"""Export downloads: the same files `python -m engine export` writes, generated under the workspace.

CSV and JSON are small and cached by the state of the run (samples.csv and the decision store); the
re-sorted folder is generated only when its download is clicked (it hard-links every image).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.export import corrected_labels, export_labels
from engine.runs import RunDir
from ui import readers, workspace


def run_stamp(run: RunDir) -> tuple:
    """Changes whenever samples.csv or any decision changes (WAL mode writes go to the -wal file first)."""
    db = run.decisions
    return (readers.file_key(run.samples), readers.file_key(db), readers.file_key(db.with_name(db.name + "-wal")))


@st.cache_data(max_entries=8, show_spinner=False)
def _labels(run_path: str, stamp: tuple) -> pd.DataFrame:
    return corrected_labels(Path(run_path))


def labels_table(run: RunDir) -> pd.DataFrame:
    return _labels(str(run.path), run_stamp(run))


def _export_dir(run: RunDir) -> Path:
    path = workspace.exports_root() / run.path.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@st.cache_data(max_entries=8, show_spinner=False)
def _file_bytes(run_path: str, fmt: str, stamp: tuple) -> bytes:
    run = RunDir(Path(run_path))
    with tempfile.TemporaryDirectory(dir=_export_dir(run)) as tmp:
        out = export_labels(run.path, Path(tmp) / f"labels.{fmt}", fmt)
        return out.read_bytes()


def file_bytes(run: RunDir, fmt: str) -> bytes:
    """The CSV or JSON export of the run as bytes."""
    return _file_bytes(str(run.path), fmt, run_stamp(run))


def folder_zip(run: RunDir) -> bytes:
    """The re-sorted folder (class folders of the corrected labels, labels.csv) as a zip archive."""
    with tempfile.TemporaryDirectory(dir=_export_dir(run)) as tmp:
        folder = export_labels(run.path, Path(tmp) / f"{run.path.name}_corrected", "folder")
        archive = shutil.make_archive(str(Path(tmp) / folder.name), "zip", root_dir=tmp, base_dir=folder.name)
        return Path(archive).read_bytes()
