"""The Train page's "Start a new run" form, drawn from `ui.train_form.SETTINGS`, and the start itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from engine.config import profile_for
from engine.runs import jobs
from engine.runs.rundir import RunDir
from ui import charts, datasets, devices, page, runs_table, train_form, workspace


def setting_widget(setting: train_form.Setting, value: Any, *, key: str, where: Any = st) -> Any:
    """The widget that fits the config field behind `setting` (checkbox, choice or number), at `value`."""
    kind = train_form.kind_of(setting.key)
    if kind is bool:
        return where.checkbox(setting.label, value=bool(value), help=setting.help, key=key)
    if isinstance(kind, tuple):
        names = setting.names or {}
        return where.selectbox(setting.label, kind, index=kind.index(value), help=setting.help, key=key,
                               format_func=lambda v: names.get(v, v))
    if kind is str:
        return where.text_input(setting.label, value=str(value), help=setting.help, key=key)
    number = int if kind is int else float
    bounds = {name: number(b) for name, b in (("min_value", setting.minimum), ("max_value", setting.maximum))
              if b is not None}
    whole = {"step": 1.0, "format": "%.0f"} if setting.whole and number is float else {}
    return where.number_input(setting.label, value=number(value), help=setting.help, key=key, **bounds, **whole)


def new_run_form(dataset: Path, current_run: str | None) -> None:
    """Device choice, the settings form and Start; a started run becomes the current run."""
    st.caption(f"Dataset: `{dataset}`")
    info = devices.detected_devices()
    detected = info.get("default", "cpu")
    # Outside the form, so that choosing a device reruns the page and the form below shows the profile the
    # engine starts from on that device (a GPU trains longer, with bigger batches).
    with st.container(horizontal=True, vertical_alignment="bottom"):
        device = setting_widget(train_form.DEVICE, "auto", key="train_device", where=st.container(width=200))
        st.caption(f"Detected: {devices.describe(info)}")
    initial = train_form.initial_values(device, detected)
    profile = train_form.engine_device(device, detected)
    values: dict[str, Any] = {train_form.DEVICE.key: device}
    with st.form("new_run"):
        columns = st.columns(3)
        for setting in train_form.SETTINGS:
            # The profile in the key: another device's profile shows its own defaults, not the last edits.
            values[setting.key] = setting_widget(setting, initial[setting.key], key=f"fit_{profile}_{setting.key}",
                                                 where=columns[setting.column])
        truth_text = st.text_input("Truth file (optional)", placeholder="/path/to/truth.csv",
                                   help="CSV with columns path,true_label: adds precision/recall of the flags")
        auto_truth = next((n for n in datasets.TRUTH_NAMES if (dataset / n).is_file()), None)
        if auto_truth is not None:
            st.caption(f"`{auto_truth}` in the data folder is used automatically; leave this empty to use it.")
        finetune = st.checkbox("Also fine-tune (phase b) right after", value=False,
                               help="Weighted supervised contrastive fine-tuning with your review decisions. It runs only when "
                                    "these images already have decisions (remembered from an earlier run); "
                                    "otherwise the run stops after phase (a) and says so")
        submitted = st.form_submit_button("Start", type="primary", icon=":material/play_arrow:")
    if submitted:
        _start(dataset, values, truth_text, finetune, cuda=bool(info.get("cuda")), current_run=current_run)


def _start(dataset: Path, values: dict[str, Any], truth_text: str, finetune: bool, *, cuda: bool,
           current_run: str | None) -> None:
    truth, problem = train_form.check_truth(truth_text)
    weights, weights_problem = train_form.check_weights(values.get("model.weights", ""))
    values = {**values, "model.weights": weights}
    problem = problem or weights_problem
    if problem is None and values[train_form.DEVICE.key] == "cuda" and not cuda:
        problem = "no GPU was found on this server: choose auto or cpu"
    busy = jobs.active_run(workspace.workspace_root())
    if problem is None and busy is not None:
        if busy.name == current_run:
            # A double click on Start, or Start while the run shown above trains: a toast, which goes by
            # itself, rather than an error that would stay red for the whole run (only the panel refreshes).
            st.toast(f"Not started: run {busy.name}, shown above, is still training (one run at a time).",
                     icon=":material/info:")
            return
        problem = f"run {busy.name} is still active: stop it or wait for it to finish (one run at a time)"
    if problem is not None:
        st.error(f"Not started: {problem}.")
        return
    run_id = jobs.new_run_id()
    profile = profile_for(train_form.engine_device(values[train_form.DEVICE.key], "cuda" if cuda else "cpu"))
    flags = train_form.fit_flags(values, truth=truth, finetune=finetune, profile=profile)
    try:
        jobs.start(dataset, workspace.runs_root() / run_id, flags, workspace=workspace.workspace_root())
    except jobs.JobError as e:
        st.error(f"Could not start: {e}")
        return
    page.set_current_run(run_id)
    st.rerun()


# ----------------------------------------------------------------------------- past runs


def past_runs(current_run: str | None) -> None:
    """Every run of the workspace with its settings and headline numbers; open one, or compare two."""
    ids = workspace.list_run_ids()
    if not ids:
        return
    st.subheader("Past runs")
    table = runs_table.runs_frame([workspace.runs_root() / i for i in ids])
    picked = st.dataframe(runs_table.shown(table), hide_index=True, on_select="rerun",
                          selection_mode="single-row", key="runs_table")
    rows = picked.selection.rows if picked else []
    if rows and table.iloc[rows[0]]["run"] != current_run:
        chosen = table.iloc[rows[0]]["run"]
        if st.button(f"Open run {chosen}", icon=":material/open_in_new:"):
            page.set_current_run(chosen)
            st.rerun()
    if len(ids) >= 2:
        _compare(ids)


def _compare(ids: list[str]) -> None:
    with st.expander("Compare two runs"):
        left, right = st.columns(2)
        run_a = left.selectbox("Run A", ids, index=0, key="compare_a", format_func=page.run_label)
        run_b = right.selectbox("Run B", ids, index=1, key="compare_b", format_func=page.run_label)
        if run_a == run_b:
            st.caption("Pick two different runs.")
            return
        path_a, path_b = workspace.runs_root() / run_a, workspace.runs_root() / run_b
        diff = runs_table.settings_diff(path_a, path_b)
        st.markdown("**Settings that differ**")
        if diff.empty:
            st.caption("Same settings.")
        else:
            st.dataframe(diff, hide_index=True)
        st.markdown("**Results**")
        st.dataframe(runs_table.shown(runs_table.headline_table([path_a, path_b])))
        curves = {run_a: RunDir(path_a).read_events(), run_b: RunDir(path_b).read_events()}
        st.plotly_chart(charts.compare_curves_figure(curves), key="compare_curves")
