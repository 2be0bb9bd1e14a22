"""Train: start phase (a) on the chosen dataset, follow it live, and compare past runs."""

from __future__ import annotations

import streamlit as st

from ui import page, progress, readers, train_panel

ctx = page.page_setup("train", "Pre-train an encoder, train a noise-robust classifier and flag suspicious labels. "
                               "Training runs in the background: you can leave this page or close the tab.")
dataset = page.current_dataset()
state = None

# ----------------------------------------------------------------------------- the current run
if ctx.run is not None and ctx.run.status_file.exists():
    st.subheader("Current run")
    state = progress.progress_panel(ctx.run, key="train_progress").get("state")
    n_flagged = (readers.json_file(ctx.run.split) or {}).get("n_flagged")
    if state == "done" and n_flagged is not None:
        st.success(f"Finished: {n_flagged:,} images flagged as possibly mislabeled.")
    progress.log_expander(ctx.run.path)

# ----------------------------------------------------------------------------- a new run
st.subheader("Start a new run")
if dataset is None:
    st.info("No dataset chosen — pick one on Data first.", icon=":material/info:")
    page.link("data", label="Go to Data", icon=":material/arrow_forward:")
else:
    train_panel.new_run_form(dataset, ctx.run_id)

# ----------------------------------------------------------------------------- past runs
train_panel.past_runs(ctx.run_id)

if state == "done":
    page.next_step("see why images were flagged", "inspect")
elif state in ("queued", "running"):
    page.next_step("while it trains, look at your data again (results appear on Inspect when it finishes)", "data")
else:
    page.next_step("start a run above, then inspect its results", "inspect")
