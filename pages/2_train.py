"""Train: start phase (a) on the chosen dataset, follow it live, and compare past runs."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.config import LOSSES
from engine.runs import jobs
from engine.runs.rundir import RunDir
from ui import charts, datasets, devices, page, progress, readers, runs_table, train_form, workspace

LOSS_NAMES = {
    "elr": "ELR — early-learning regularisation (recommended)",
    "ce": "Cross-entropy (baseline)",
    "nfl+rce": "NFL + RCE — normalised focal + reverse cross-entropy",
}
DEVICES = ("auto", "cpu", "cuda")


def start_run(dataset: Path, settings: train_form.FitSettings, defaults: train_form.FitSettings) -> None:
    run_id = jobs.new_run_id()
    run_dir = workspace.runs_root() / run_id
    try:
        jobs.start(dataset, run_dir, train_form.fit_flags(settings, defaults), workspace=workspace.workspace_root())
    except jobs.JobError as e:
        st.error(f"Could not start: {e}")
        return
    page.set_current_run(run_id)
    st.rerun()


ctx = page.page_setup("train", "Pre-train an encoder, train a noise-robust classifier and flag suspicious labels. "
                               "Training runs in the background: you can leave this page or close the tab.")
dataset = page.current_dataset()
info = devices.detected_devices()
state = None

# ----------------------------------------------------------------------------- the current run
if ctx.run is not None and ctx.run.status_file.exists():
    st.subheader("Current run")
    status = progress.progress_panel(ctx.run, key="train_progress")
    state = status.get("state")
    n_flagged = (readers.json_file(ctx.run.split) or {}).get("n_flagged")
    if state == "done" and n_flagged is not None:
        st.success(f"Finished: {n_flagged:,} images flagged as possibly mislabeled.")
    progress.log_expander(ctx.run.path)

# ----------------------------------------------------------------------------- a new run
st.subheader("Start a new run")
busy = jobs.active_run(workspace.workspace_root())
if dataset is None:
    st.info("No dataset chosen — pick one on Data first.", icon=":material/info:")
    page.link("data", label="Go to Data", icon=":material/arrow_forward:")
else:
    st.caption(f"Dataset: `{dataset}`")
    auto_truth = next((dataset / n for n in datasets.TRUTH_NAMES if (dataset / n).is_file()), None)
    # Outside the form, so that choosing a device reruns the page and the form below shows the profile the
    # engine starts from on that device (a GPU trains longer, with bigger batches).
    with st.container(horizontal=True, vertical_alignment="bottom"):
        device = st.selectbox("Device", DEVICES, key="train_device", width=200)
        st.caption(f"Detected: {devices.describe(info)}")
    profile_device = train_form.engine_device(device, info.get("default", "cpu"))
    defaults = train_form.default_settings(train_form.default_config(profile_device), device=device)
    with st.form("new_run"):
        left, middle, right = st.columns(3)
        loss = left.selectbox("Loss", LOSSES, index=LOSSES.index(defaults.loss), format_func=LOSS_NAMES.get)
        pretrain = left.checkbox("Pre-train the encoder (SimCLR)", value=defaults.pretrain,
                                 help="Self-supervised pre-training makes the flags much better; off = from scratch")
        pretrain_epochs = left.number_input("Pre-training epochs", min_value=1, max_value=5000,
                                            value=defaults.pretrain_epochs)
        epochs = middle.number_input("Classifier epochs", min_value=1, max_value=5000, value=defaults.epochs)
        batch_size = middle.number_input("Batch size", min_value=2, max_value=8192, value=defaults.batch_size)
        image_size = middle.number_input("Image size (px)", min_value=8, max_value=512, value=defaults.image_size,
                                         help="Every image is resized to this square size once, before training")
        seed = right.number_input("Seed", min_value=0, max_value=2**31 - 1, value=defaults.seed)
        truth_text = st.text_input("Truth file (optional)", placeholder="/path/to/truth.csv",
                                   help="CSV with columns path,true_label: adds precision/recall of the flags")
        if auto_truth is not None:
            st.caption(f"`{auto_truth.name}` in the data folder is used automatically; leave this empty to use it.")
        finetune = st.checkbox("Also fine-tune (phase b) right after", value=defaults.finetune,
                               help="Weighted supervised contrastive fine-tuning on the clean-looking images")
        submitted = st.form_submit_button("Start", type="primary", icon=":material/play_arrow:")
    if submitted:
        truth, problem = train_form.check_truth(truth_text)
        if problem is None and device == "cuda" and not info.get("cuda"):
            problem = "no GPU was found on this server: choose auto or cpu"
        if problem is None and busy is not None:
            problem = f"run {busy.name} is still active: stop it or wait for it to finish (one run at a time)"
        if problem is not None:
            st.error(f"Not started: {problem}.")
        else:
            settings = train_form.FitSettings(
                loss=loss, pretrain=pretrain, pretrain_epochs=int(pretrain_epochs), epochs=int(epochs),
                batch_size=int(batch_size), image_size=int(image_size), device=device, seed=int(seed),
                truth=truth, finetune=finetune,
            )
            start_run(dataset, settings, defaults)

# ----------------------------------------------------------------------------- past runs
ids = workspace.list_run_ids()
if ids:
    st.subheader("Past runs")
    table = runs_table.runs_frame([workspace.runs_root() / i for i in ids])
    picked = st.dataframe(
        table, hide_index=True, on_select="rerun", selection_mode="single-row", key="runs_table",
        column_config={"F1": st.column_config.NumberColumn(format="%.3f"),
                       "accuracy": st.column_config.NumberColumn(format="%.3f")},
    )
    rows = picked.selection.rows if picked else []
    if rows and table.iloc[rows[0]]["run"] != ctx.run_id:
        chosen = table.iloc[rows[0]]["run"]
        if st.button(f"Open run {chosen}", icon=":material/open_in_new:"):
            page.set_current_run(chosen)
            st.rerun()

if len(ids) >= 2:
    with st.expander("Compare two runs"):
        left, right = st.columns(2)
        run_a = left.selectbox("Run A", ids, index=0, key="compare_a", format_func=page.run_label)
        run_b = right.selectbox("Run B", ids, index=1, key="compare_b", format_func=page.run_label)
        if run_a == run_b:
            st.caption("Pick two different runs.")
        else:
            path_a, path_b = workspace.runs_root() / run_a, workspace.runs_root() / run_b
            diff = runs_table.settings_diff(path_a, path_b)
            st.markdown("**Settings that differ**")
            if diff.empty:
                st.caption("Same settings.")
            else:
                st.dataframe(diff, hide_index=True)
            st.markdown("**Results**")
            st.dataframe(runs_table.headline_table([path_a, path_b]))
            curves = {run_a: RunDir(path_a).read_events(), run_b: RunDir(path_b).read_events()}
            st.plotly_chart(charts.compare_curves_figure(curves), key="compare_curves")

if state == "done":
    page.next_step("see why images were flagged", "inspect")
elif state in ("queued", "running"):
    page.next_step("while it trains, look at your data again (results appear on Inspect when it finishes)", "data")
else:
    page.next_step("start a run above, then inspect its results", "inspect")
