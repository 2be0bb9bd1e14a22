"""Export downloads: the same files `python -m engine export` writes, generated under the workspace.

CSV and JSON are small and cached by the state of the run (samples.csv and the decision store). The
re-sorted folder is zipped only when its download is clicked, to a file under
`WORKSPACE/exports/<run>/` named after that state, so clicking again reuses it until samples.csv or a
decision changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.review.decisions import load_decisions
from engine.review.export import AUTO_RELABEL, corrected_labels, export_labels
from engine.runs.rundir import RunDir
from ui import readers, workspace


@dataclass(frozen=True)
class LeaveOut:
    """What the export leaves out: the engine's drop_duplicates and drop_outliers (`export --drop-duplicates`,
    `--drop-outliers Q`)."""

    duplicates: bool = False
    outliers: float | None = None

    def kwargs(self) -> dict:
        return {"drop_duplicates": self.duplicates, "drop_outliers": self.outliers}

    def flags(self) -> str:
        """The same choice as CLI flags, for the page's caption."""
        return (" --drop-duplicates" if self.duplicates else "") + (
            f" --drop-outliers {self.outliers}" if self.outliers is not None else "")


NOTHING = LeaveOut()


def decisions_digest(run: RunDir) -> str:
    """A digest of every current decision (path, action, label, time).

    Content, not the file's mtime: opening the store touches decisions.sqlite even when nothing changes,
    so an mtime key would miss on every visit.
    """
    h = hashlib.sha256()
    for d in sorted(load_decisions(run.decisions).values(), key=lambda d: d.path):
        h.update("\x1f".join((d.path, d.action, d.label or "", d.decided_at)).encode() + b"\x1e")
    return h.hexdigest()


def run_stamp(run: RunDir) -> tuple:
    """Changes whenever samples.csv (replaced atomically by the engine) or any decision changes."""
    return readers.file_key(run.samples), decisions_digest(run)


@st.cache_data(max_entries=8, show_spinner=False)
def _labels(run_path: str, stamp: tuple, policy: str, leave_out: LeaveOut) -> pd.DataFrame:
    return corrected_labels(Path(run_path), auto_relabel=policy, **leave_out.kwargs())


def labels_table(run: RunDir, policy: str = AUTO_RELABEL[0], leave_out: LeaveOut = NOTHING) -> pd.DataFrame:
    return _labels(str(run.path), run_stamp(run), policy, leave_out)


def _export_dir(run: RunDir) -> Path:
    path = workspace.exports_root() / run.path.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@st.cache_data(max_entries=8, show_spinner=False)
def _file_bytes(run_path: str, fmt: str, stamp: tuple, policy: str, leave_out: LeaveOut) -> bytes:
    run = RunDir(Path(run_path))
    with tempfile.TemporaryDirectory(dir=_export_dir(run)) as tmp:
        out = export_labels(run.path, Path(tmp) / f"labels.{fmt}", fmt, auto_relabel=policy, **leave_out.kwargs())
        return out.read_bytes()


def file_bytes(run: RunDir, fmt: str, policy: str = AUTO_RELABEL[0], leave_out: LeaveOut = NOTHING) -> bytes:
    """The CSV or JSON export of the run as bytes."""
    return _file_bytes(str(run.path), fmt, run_stamp(run), policy, leave_out)


def folder_zip(run: RunDir, policy: str = AUTO_RELABEL[0], leave_out: LeaveOut = NOTHING) -> Path:
    """The re-sorted folder (class folders of the corrected labels, labels.csv) as a zip file on disk.

    Lives at `WORKSPACE/exports/<run>/<run>_corrected.<state>.zip`, where <state> digests `run_stamp`: an
    existing file for the current state is returned as is; building a new one removes those of older states.
    The zip is written in a temporary folder beside it and moved into place, so a half-written archive is
    never served.
    """
    folder = _export_dir(run)
    name = f"{run.path.name}_corrected"
    state = hashlib.sha256(repr((run_stamp(run), policy, leave_out)).encode()).hexdigest()[:16]
    target = folder / f"{name}.{state}.zip"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tree = export_labels(run.path, Path(tmp) / name, "folder", auto_relabel=policy, **leave_out.kwargs())
        archive = shutil.make_archive(str(Path(tmp) / name), "zip", root_dir=tmp, base_dir=tree.name)
        os.replace(archive, target)
    for stale in folder.glob(f"{name}.*.zip"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def folder_zip_data(run: RunDir, policy: str = AUTO_RELABEL[0], leave_out: LeaveOut = NOTHING) -> bytes:
    """The zip's content for the download button.

    Streamlit reads whatever `st.download_button` gets (bytes or a file object) into one bytes object in
    its media store; reading the file here gives that same single copy and closes the file at once.
    """
    try:
        return folder_zip(run, policy, leave_out).read_bytes()
    except FileNotFoundError:  # a download of a newer state, built at the same moment, removed this one
        return folder_zip(run, policy, leave_out).read_bytes()
