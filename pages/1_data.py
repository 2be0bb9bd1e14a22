"""Data: choose the images to clean — the bundled sample, a .zip, a folder, or a path on this server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.data.intake import IntakeError
from ui import charts, datasets, page, workspace
from ui.thumbs import thumbnail

CHOICES = (datasets.SAMPLE_LABEL, "Upload a .zip", "Upload a folder", "A folder or .zip on this server")
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


def use(summary: datasets.DatasetSummary) -> None:
    page.set_current_dataset(Path(summary.root))
    st.session_state.setdefault(REPORTS_KEY, {})[summary.root] = summary


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
        use(summary)
    st.session_state[ROUND_KEY] = st.session_state.get(ROUND_KEY, 0) + 1
    st.rerun()


def too_big(files: list, limit_mb: int) -> str | None:
    total = sum(getattr(f, "size", 0) for f in files)
    if total > limit_mb * 1024 * 1024:
        return f"The upload is {total / 2**20:,.0f} MB, over the {limit_mb:,} MB limit (server.maxUploadSize)."
    return None


ctx = page.page_setup("data", "Choose the images to clean: one sub-folder per class, named after the class.")
sample = datasets.sample_data_path()
limit_mb = page.upload_limit_mb()

current = page.current_dataset()  # the bundled sample when nothing was chosen yet

first = CHOICES[0] if current is None or (sample is not None and current == sample) else CHOICES[3]
choice = st.radio("Where are your images?", CHOICES, index=CHOICES.index(first), key=CHOICE_KEY,
                  persist_state="session")
round_ = st.session_state.get(ROUND_KEY, 0)
if ERROR_KEY in st.session_state:
    st.error(st.session_state.pop(ERROR_KEY))

if choice == CHOICES[0]:
    if sample is None:
        st.warning("The bundled sample (sample_data/) is missing from this installation.")
    elif current != sample:
        page.set_current_dataset(sample)
        current = sample
elif choice == CHOICES[1]:
    st.caption(f"A .zip of one folder per class (a single top folder inside is fine). Up to {limit_mb:,} MB.")
    upload = st.file_uploader("Upload a .zip", type=["zip"], key=f"zip_upload_{round_}")
    if upload is not None:
        problem = too_big([upload], limit_mb)
        if problem:
            st.error(problem)
        else:
            intake_upload(lambda d: (datasets.save_zip(upload, d), d / "data", []), what="zip file")
elif choice == CHOICES[2]:
    st.caption(f"Pick the folder that holds one sub-folder per class. Up to {limit_mb:,} MB in total.")
    # No type filter: a README or .DS_Store in the folder must not fail the upload; save_folder leaves them out.
    files = st.file_uploader("Upload a folder", accept_multiple_files="directory", key=f"dir_upload_{round_}")
    if files:
        problem = too_big(files, limit_mb)
        if problem:
            st.error(problem)
        else:
            def save_folder(upload_dir: Path) -> tuple[Path, None, list[str]]:
                folder, left_out = datasets.save_folder(files, upload_dir)
                what = "file that is not an image" if left_out == 1 else "files that are not images"
                notes = [f"Left out {left_out} {what}."] if left_out else []
                return folder, None, notes

            intake_upload(save_folder, what="folder")
else:
    with st.form("server_path"):
        text = st.text_input("Folder (or .zip) on this server",
                             value=str(current) if current and current != sample else "",
                             placeholder="/data/my_images")
        submitted = st.form_submit_button("Use this dataset")
    if submitted:
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

# ----------------------------------------------------------------------------- the intake report
current = page.current_dataset()
if current is None:
    st.info("No dataset chosen yet — pick one of the options above, then train on it.", icon=":material/info:")
    st.stop()

summary = st.session_state.get(REPORTS_KEY, {}).get(str(current))
if summary is None:
    try:
        summary = summary_of(str(current), folder_stamp(current))
    except IntakeError as e:
        st.error(f"{current} cannot be used: {e}")
        page.set_current_dataset(None)
        st.stop()

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
    st.info(f"Found `{Path(summary.truth).name}`: training will also report how well the flags match the true labels.",
            icon=":material/fact_check:")

st.plotly_chart(charts.class_counts_figure(summary.counts), key="class_counts")
if summary.skipped:
    st.markdown("**Skipped files**")
    st.dataframe(pd.DataFrame(summary.skipped, columns=["file", "reason"]), hide_index=True, height=220)

st.markdown("**Examples per class**")
for cls in summary.classes:
    st.caption(f"{cls} · {summary.counts.get(cls, 0):,} images")
    st.image([thumbnail(p, 96) for p in summary.examples.get(cls, [])], width=96)

page.next_step("train a model on this dataset", "train")
