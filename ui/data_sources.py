"""The Data page's panels: where the images come from (sample, .zip, folder, server path) and the intake report.

Uploads are saved and scanned by `ui.datasets`; this module only draws the choices and says, on the
page, why an upload was refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.data.intake import IntakeError
from ui import charts, datasets, page, workspace
from ui.thumbs import thumbnail

SAMPLE, ZIP, FOLDER, SERVER = (datasets.SAMPLE_LABEL, "Upload a .zip", "Upload a folder",
                               "A folder or .zip on this server")
CHOICES = (SAMPLE, ZIP, FOLDER, SERVER)
CHOICE_KEY = "data_choice"
ROUND_KEY = "upload_round"  # bumped after each upload: a fresh uploader lets the upload's memory go
NOTES_KEY = "upload_notes"  # warnings about the last upload, shown once after its report
ERROR_KEY = "upload_error"  # why the last upload was refused, shown once
REPORTS_KEY = "upload_reports"  # summaries made during an upload (they include zip-level refusals)


@st.cache_data(max_entries=8, show_spinner="Checking every image…")
def summary_of(folder: str, stamp: float) -> datasets.DatasetSummary:
    return datasets.summarize(Path(folder))


def folder_stamp(folder: Path) -> float:
    """Cache key of a dataset folder: its own and its class folders' mtimes (adding a file changes one)."""
    try:
        return max([folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir() if p.is_dir()])
    except OSError:
        return -1.0


def too_big(files: list, limit_mb: int) -> str | None:
    total = sum(getattr(f, "size", 0) for f in files)
    if total > limit_mb * 1024 * 1024:
        return f"The upload is {total / 2**20:,.0f} MB, over the {limit_mb:,} MB limit (server.maxUploadSize)."
    return None


# ----------------------------------------------------------------------------- choosing the source


def choose_source(current: Path | None, sample: Path | None) -> None:
    """The four ways to give images; a new choice becomes the current dataset."""
    # The radio shows where the current dataset came from: a dataset that follows the current run (an
    # upload, a server path) must not be replaced by the sample because the radio still says "sample".
    if st.session_state.get(CHOICE_KEY) == SAMPLE and current is not None and current != sample:
        st.session_state[CHOICE_KEY] = SERVER
    first = SAMPLE if current is None or current == sample else SERVER
    choice = st.radio("Where are your images?", CHOICES, index=CHOICES.index(first), key=CHOICE_KEY,
                      persist_state="session", on_change=_chose, args=(sample,))
    if ERROR_KEY in st.session_state:
        st.error(st.session_state.pop(ERROR_KEY))
    limit_mb = page.upload_limit_mb()
    round_ = st.session_state.get(ROUND_KEY, 0)
    if choice == SAMPLE and sample is None:
        st.warning("The bundled sample (sample_data/) is missing from this installation.")
    elif choice == ZIP:
        _zip_upload(limit_mb, round_)
    elif choice == FOLDER:
        _folder_upload(limit_mb, round_)
    elif choice == SERVER:
        _server_path(current if current != sample else None)


def _chose(sample: Path | None) -> None:
    if st.session_state.get(CHOICE_KEY) == SAMPLE and sample is not None:
        page.set_current_dataset(sample)


def _zip_upload(limit_mb: int, round_: int) -> None:
    st.caption(f"A .zip of one folder per class (a single top folder inside is fine). Up to {limit_mb:,} MB.")
    # No type filter: the browser would refuse another file with the reason only in a tooltip; the save
    # below refuses it with a sentence on the page instead.
    upload = st.file_uploader("Upload a .zip", key=f"zip_upload_{round_}")
    if upload is not None:
        problem = too_big([upload], limit_mb)
        if problem:
            st.error(problem)
        else:
            intake_upload(lambda d: (datasets.save_zip(upload, d), d / "data", []), what="zip file")


def _folder_upload(limit_mb: int, round_: int) -> None:
    st.caption(f"Pick the folder that holds one sub-folder per class. Up to {limit_mb:,} MB in total.")
    # No type filter: a README or .DS_Store in the folder must not fail the upload; save_folder leaves them out.
    files = st.file_uploader("Upload a folder", accept_multiple_files="directory", key=f"dir_upload_{round_}")
    if not files:
        return
    problem = too_big(files, limit_mb)
    if problem:
        st.error(problem)
        return

    def save_folder(upload_dir: Path) -> tuple[Path, None, list[str]]:
        folder, left_out = datasets.save_folder(files, upload_dir)
        what = "file that is not an image" if left_out == 1 else "files that are not images"
        return folder, None, [f"Left out {left_out} {what}."] if left_out else []

    intake_upload(save_folder, what="folder")


def _server_path(shown: Path | None) -> None:
    with st.form("server_path"):
        text = st.text_input("Folder (or .zip) on this server", value=str(shown) if shown else "",
                             placeholder="/data/my_images")
        submitted = st.form_submit_button("Use this dataset")
    if not submitted:
        return
    path = Path(text.strip()).expanduser()
    if not text.strip():
        st.error("Type the path of a folder with one sub-folder per class.")
    elif not path.exists():
        st.error(f"{path} does not exist on this server.")
    elif path.is_file() and path.suffix.lower() == ".zip":
        intake_upload(lambda d: (path, d / "data", []), what="zip file")
    elif not path.is_dir():
        st.error(f"{path} is not a folder or a .zip file.")
    else:
        page.set_current_dataset(path.resolve())
        st.rerun()


def intake_upload(save: Callable[[Path], tuple[Path, Path | None, list[str]]], *, what: str) -> None:
    """Save an upload in a fresh WORKSPACE/uploads/<id>/ folder and scan it; report problems clearly.

    `save(upload_dir)` stores the upload and returns (what to scan, where to extract a zip, notes).
    Either way the uploader is reset afterwards, so a refused file is not processed again on every rerun.
    """
    upload_dir = workspace.new_upload_dir()
    try:
        with st.spinner(f"Checking the {what}…"):
            source, extract_to, notes = save(upload_dir)
            summary = datasets.summarize(source, extract_to=extract_to)
    except IntakeError as e:
        datasets.discard_upload(upload_dir)
        st.session_state[ERROR_KEY] = f"This {what} cannot be used: {e}"
    except OSError as e:
        datasets.discard_upload(upload_dir)
        st.session_state[ERROR_KEY] = f"Could not save the {what}: {e}"
    else:
        st.session_state[NOTES_KEY] = notes
        page.set_current_dataset(Path(summary.root))
        st.session_state.setdefault(REPORTS_KEY, {})[summary.root] = summary
    st.session_state[ROUND_KEY] = st.session_state.get(ROUND_KEY, 0) + 1
    st.rerun()


# ----------------------------------------------------------------------------- the intake report


def summary_for(current: Path) -> datasets.DatasetSummary | None:
    """The intake report of `current` (made during its upload, else cached by folder mtime); None if unusable."""
    summary = st.session_state.get(REPORTS_KEY, {}).get(str(current))
    if summary is not None:
        return summary
    try:
        return summary_of(str(current), folder_stamp(current))
    except IntakeError as e:
        st.error(f"{current} cannot be used: {e}")
        page.set_current_dataset(None)
        return None


def intake_report(summary: datasets.DatasetSummary) -> None:
    st.subheader("Dataset")
    for note in st.session_state.pop(NOTES_KEY, []):
        st.warning(note)
    st.caption(f"`{summary.root}`")
    cols = st.columns(4)
    cols[0].metric("Images", f"{summary.n_images:,}")
    cols[1].metric("Classes", len(summary.classes))
    cols[2].metric("Skipped files", len(summary.skipped))
    cols[3].metric("Other files", summary.ignored, help="Files that are not images (README, truth.csv, …)")
    if summary.truth:
        st.info(f"Found `{Path(summary.truth).name}`: training will also report how well the flags match the true "
                "labels.", icon=":material/fact_check:")
    st.plotly_chart(charts.class_counts_figure(summary.counts), key="class_counts")
    if summary.skipped:
        st.markdown("**Skipped files**")
        st.dataframe(pd.DataFrame(summary.skipped, columns=["file", "reason"]), hide_index=True, height=220)
    st.markdown("**Examples per class** (a random few of each)")
    for cls in summary.classes:
        st.caption(f"{cls} · {summary.counts.get(cls, 0):,} images")
        st.image([thumbnail(p, 96) for p in summary.examples.get(cls, [])], width=96)
