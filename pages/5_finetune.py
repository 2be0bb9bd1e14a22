"""Fine-tune: phase (b) — weighted supervised contrastive learning with your review decisions."""

from __future__ import annotations

from dataclasses import fields

import pandas as pd
import streamlit as st

from engine.method.holdout import Check, least_decisions
from engine.review.decisions import finetune_waits
from engine.runs import jobs
from engine.runs.status import ACTIVE_STATES
from ui import page, progress, readers, runs_table, wording, workspace

ctx = page.page_setup("finetune", "Phase (b): retrain the encoder with weighted supervised contrastive learning, "
                                   "trusting clean-looking images and your review decisions most, then refresh "
                                   "the flags and suggestions.")
run = page.require_run(ctx)
page.require_results(run, "fine-tuning")
status = jobs.poll(run.path)
state = status.get("state")
decisions = readers.decisions_frame(run)
counts = decisions["action"].value_counts()

st.subheader("Your decisions")
cols = st.columns(4)
cols[0].metric("Human decisions used", f"{len(decisions):,}")
cols[1].metric("Kept", f"{int(counts.get('keep', 0)):,}")
cols[2].metric("Relabeled", f"{int(counts.get('relabel', 0)):,}")
cols[3].metric("Discarded", f"{int(counts.get('discard', 0)):,}")
waits = finetune_waits(readers.run_config(run).finetune.require_decisions, run.decisions)
if waits:
    st.info("Fine-tuning starts once you have reviewed some flagged images: without your decisions it "
            "learns the model's own mistakes, and on real label noise it was measured to make the labels "
            "worse. Decide a few images on the Review page, then come back.", icon=":material/rate_review:")
elif decisions.empty:
    st.caption("No decisions yet: fine-tuning then relies on the model's own clean probabilities.")

# ----------------------------------------------------------------------------- start / follow
if not waits or state in ACTIVE_STATES:
    st.subheader("Fine-tuning")
if status.get("phase") == "finetune" or state in ACTIVE_STATES:
    progress.progress_panel(run, key="finetune_progress")
if state in ACTIVE_STATES:
    st.caption("Fine-tuning is running; the results below refresh when it finishes.")
elif waits:
    pass  # the info above says what to do first; the link at the bottom goes there
else:
    f = readers.run_config(run).finetune
    if f.check_share > 0:
        st.caption(f"{f.check_share:.0%} of your decisions are held out to check the result: the fine-tuned model "
                   "is kept only when it agrees with you on them clearly better than phase (a)'s; otherwise the run "
                   "keeps phase (a)'s model with your decisions, so fine-tuning cannot make the labels worse.")
        least = least_decisions(f.check_share, f.check_p)
        if len(decisions) < least:
            st.caption(f"With {len(decisions):,} decision{'' if len(decisions) == 1 else 's'} the check cannot pass yet: review at least {least:,} "
                       "images for fine-tuning to be able to keep its model.")
    label = "Fine-tune again with the current decisions" if run.samples_before.exists() else "Start fine-tuning"
    if st.button(label, type="primary", icon=":material/play_arrow:", key="start_finetune"):
        try:
            jobs.start_finetune(run.path, workspace=workspace.workspace_root())
        except jobs.JobError as e:
            st.error(f"Could not start: {e}")
        else:
            st.rerun()

# ----------------------------------------------------------------------------- before / after
before = readers.samples(run, phase_a=True)
after = readers.samples(run)
if before is not None and after is not None:
    st.subheader("Before and after")
    check = (readers.json_file(run.finetune_meta) or {}).get("check")
    verdict = None
    if isinstance(check, dict) and set(check) >= {f.name for f in fields(Check)}:
        verdict = Check(**{f.name: check[f.name] for f in fields(Check)})
        line = verdict.sentence()
        (st.success if verdict.kept else st.warning)(line[0].upper() + line[1:] + ".", icon=":material/fact_check:")
    merged = before[["path", "suggested_label", "flagged"]].merge(
        after[["path", "suggested_label", "flagged"]], on="path", suffixes=("_before", "_after"))
    changed = int((merged["suggested_label_before"] != merged["suggested_label_after"]).sum())
    cols = st.columns(3)
    n_before, n_after = int(before["flagged"].sum()), int(after["flagged"].sum())
    cols[0].metric("Flagged before", f"{n_before:,}")
    cols[1].metric("Flagged after", f"{n_after:,}", f"{n_after - n_before:+,}", delta_color="inverse")
    cols[2].metric("Suggestions changed", f"{changed:,}")
    metrics_before = readers.json_file(run.metrics_before) or {}
    metrics_after = readers.json_file(run.metrics) or {}
    if metrics_before or metrics_after:
        st.markdown("**Against the truth file**")
        names = wording.METRIC_NAMES
        after_name = "after (phase b)" if verdict is None or verdict.kept else "after (phase a + your decisions)"
        table = pd.DataFrame({"before (phase a)": [metrics_before.get(m) for m in names],
                              after_name: [metrics_after.get(m) for m in names]}, index=list(names.values()))
        st.dataframe(runs_table.shown(table))
elif state not in ACTIVE_STATES and not waits:
    st.caption("Before/after numbers appear here once fine-tuning has finished.")

if waits:
    page.next_step("review the flagged images", "review")
else:
    page.next_step("export the corrected labels", "export")
