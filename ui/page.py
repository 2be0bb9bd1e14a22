"""Page setup shared by every page: the current run and dataset, the sidebar run picker, "Next" hints.

State rules (so a refresh, a second tab or a server restart re-attach to the same run):
* the run id lives in the URL (`?run=<id>`) and is mirrored in `st.session_state["run"]`;
* the chosen dataset lives in `?data=<path>` and `st.session_state["dataset"]`, and follows the run:
  choosing another run makes that run's dataset the current one (see `current_dataset`);
* everything else is read from the run folder.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir
from engine.runs.status import ACTIVE_STATES, RESUMABLE_STATES, effective_state
from ui import datasets, workspace

PAGES = {
    "data": ("pages/1_data.py", "Data", ":material/folder_open:"),
    "train": ("pages/2_train.py", "Train", ":material/model_training:"),
    "inspect": ("pages/3_inspect.py", "Inspect", ":material/insights:"),
    "review": ("pages/4_review.py", "Review", ":material/rule:"),
    "finetune": ("pages/5_finetune.py", "Fine-tune", ":material/tune:"),
    "export": ("pages/6_export.py", "Export", ":material/download:"),
}
RUN_KEY = "run"
DATASET_KEY = "dataset"
DATASET_RUN_KEY = "dataset_run"  # the run that was current when the dataset was chosen
PICKER_KEY = "_run_picker"
SESSION_KEY = "session_id"
VIA_APP_KEY = "_via_app"  # set by app.py: this session has been through the navigation
INTENDED_KEY = "_intended_page"  # a page opened without app.py, to show once app.py has run


@dataclass(frozen=True)
class PageContext:
    run_id: str | None
    run: RunDir | None
    session_id: str


def page_setup(name: str, caption: str | None = None) -> PageContext:
    """Title + caption of page `name` (a key of PAGES), then the current run (URL, this session, newest run)."""
    _through_app(name)
    st.title(PAGES[name][1])
    if caption:
        st.caption(caption)
    run_id = current_run_id()
    run = RunDir(workspace.runs_root() / run_id) if run_id else None
    return PageContext(run_id=run_id, run=run, session_id=session_id())


def entered_through_app() -> None:
    """Called by app.py before it runs the page: this session now knows the navigation."""
    st.session_state[VIA_APP_KEY] = True


def _through_app(name: str) -> None:
    """Make sure app.py (navigation, sidebar, layout) runs around this page.

    Until app.py has run once in a server process, Streamlit serves a deep link such as `/review` from
    the `pages/` folder directly, without the entrypoint (its multipage v1 fallback). This happens
    on the first refresh after a server restart; going through app.py once switches the whole
    server to the `st.navigation` pages, and app.py then opens the page that was asked for. A session
    that has been through app.py once never needs this again.
    """
    if st.session_state.get(VIA_APP_KEY):
        return
    st.session_state[INTENDED_KEY] = PAGES[name][0]
    st.switch_page("app.py", query_params=st.query_params.to_dict())


def take_intended_page() -> str | None:
    """The page to open after a redirect through app.py (see _through_app), once."""
    return st.session_state.pop(INTENDED_KEY, None)


def session_id() -> str:
    """An id for this browser session: the `source` of its review decisions (undo acts on its own)."""
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = "browser-" + secrets.token_hex(4)
    return st.session_state[SESSION_KEY]


# ----------------------------------------------------------------------------- current run


def current_run_id() -> str | None:
    """The run this page shows; keeps URL and session state in step. None when the workspace has no run."""
    from_url = st.query_params.get(RUN_KEY)
    if from_url and workspace.run_path(from_url):
        run_id: str | None = from_url
    elif workspace.run_path(st.session_state.get(RUN_KEY)):
        run_id = st.session_state[RUN_KEY]
    else:
        ids = workspace.list_run_ids()
        run_id = ids[0] if ids else None
    _remember_run(run_id)
    return run_id


def set_current_run(run_id: str | None) -> None:
    """Select a run (e.g. one just started); the caller usually follows with st.rerun()."""
    _remember_run(run_id)


def _remember_run(run_id: str | None) -> None:
    st.session_state[RUN_KEY] = run_id
    if run_id and st.query_params.get(RUN_KEY) != run_id:
        st.query_params[RUN_KEY] = run_id
    elif not run_id and RUN_KEY in st.query_params:
        del st.query_params[RUN_KEY]


def run_label(run_id: str) -> str:
    """'2026-11-27T14-05-12_ab12 · digits' for pickers (no state: it changes while the picker is shown)."""
    run = RunDir(workspace.runs_root() / run_id)
    source = read_json(run.source, default={}) or read_json(run.launch, default={}) or {}
    data = Path(source.get("data") or "").name
    return " · ".join(p for p in (run_id, data) if p)


def run_picker() -> None:
    """Sidebar selectbox of the workspace's runs; choosing one changes `?run=` for every page."""
    ids = workspace.list_run_ids()
    if not ids:
        st.caption("No runs yet — start one on **Train**.")
        return
    current = current_run_id()
    # Sync the widget before it is created (a page may have selected a new run since the last rerun).
    if st.session_state.get(PICKER_KEY) != current:
        st.session_state[PICKER_KEY] = current
    st.selectbox("Current run", ids, key=PICKER_KEY, format_func=run_label, on_change=_picked)


def _picked() -> None:
    _remember_run(st.session_state.get(PICKER_KEY))


# ----------------------------------------------------------------------------- dataset


def current_dataset() -> Path | None:
    """The dataset new runs train on: the one chosen with the current run, else the current run's, else the sample.

    A dataset chosen on the Data page (or given in the URL) belongs to the run that was current then:
    once another run becomes current (the sidebar picker, `?run=`, a run just started), the dataset
    follows that run, so "Start a new run" never offers the sample while the run shown is on an upload.
    """
    run_id = current_run_id()
    if DATASET_KEY not in st.session_state:  # a new session: the URL's dataset came with the URL's run
        url_data = st.query_params.get("data")
        st.session_state[DATASET_KEY] = url_data or None
        st.session_state[DATASET_RUN_KEY] = run_id
    chosen = st.session_state.get(DATASET_KEY)
    if chosen and st.session_state.get(DATASET_RUN_KEY) == run_id and Path(chosen).exists():
        dataset: Path | None = Path(chosen)
    else:
        dataset = run_dataset(run_id) or datasets.sample_data_path()  # the app opens with the sample ready
    set_current_dataset(dataset)
    return dataset


def run_dataset(run_id: str | None) -> Path | None:
    """The data folder a run trains on (source.json, else the app's launch record), when it still exists."""
    path = workspace.run_path(run_id)
    if path is None:
        return None
    run = RunDir(path)
    data = (read_json(run.source, default={}) or {}).get("data") or (read_json(run.launch, default={}) or {}).get("data")
    return Path(data) if data and Path(data).exists() else None


def set_current_dataset(path: Path | None) -> None:
    """Choose the dataset for new runs (the Data page); it stays chosen while the current run does."""
    st.session_state[DATASET_KEY] = str(path) if path else None
    st.session_state[DATASET_RUN_KEY] = st.session_state.get(RUN_KEY)
    if path and st.query_params.get("data") != str(path):
        st.query_params["data"] = str(path)
    elif not path and "data" in st.query_params:
        del st.query_params["data"]


def upload_limit_mb() -> int:
    """The upload size limit (`server.maxUploadSize` in .streamlit/config.toml), in MB."""
    return int(st.get_option("server.maxUploadSize"))


# ----------------------------------------------------------------------------- guidance


def link(page: str, label: str | None = None, icon: str | None = None) -> None:
    path, title, page_icon = PAGES[page]
    st.page_link(path, label=label or title, icon=icon or page_icon)


def next_step(text: str, page: str) -> None:
    """The 'what now' hint at the bottom of every page, as a link to the next page."""
    st.divider()
    link(page, label=f"Next: {text}", icon=":material/arrow_forward:")


def missing(message: str, page: str, action: str) -> None:
    """Say which prerequisite is missing and link to where to get it; stops the page."""
    st.info(message, icon=":material/info:")
    link(page, label=action, icon=":material/arrow_forward:")
    st.stop()


def require_run(ctx: PageContext) -> RunDir:
    if ctx.run is None:
        missing("No run selected — start one on Train.", "train", "Go to Train")
    assert ctx.run is not None
    return ctx.run


def require_results(run: RunDir, what: str) -> None:
    """Stop with a clear message while the run has no samples.csv yet (still training, failed, ...)."""
    if run.samples.exists():
        return
    state = effective_state(run)
    if state in ACTIVE_STATES:
        message = f"Run {run.path.name} is still training — {what} appears when it finishes."
    elif state in RESUMABLE_STATES:
        how = {"cancelled": "was stopped", "interrupted": "was interrupted", "failed": "failed"}[state]
        message = (f"Run {run.path.name} {how} before its results: **Resume** it on Train, or start a new one "
                   "there.")
    else:
        message = f"Run {run.path.name} has no results yet."
    missing(message, "train", "Go to Train")
