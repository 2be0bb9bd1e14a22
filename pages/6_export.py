"""Export: download the corrected labels (CSV, JSON) or the image folder re-sorted by corrected label."""

from __future__ import annotations

import streamlit as st

from engine.review.estimate import accuracy_line, label_accuracy
from engine.review.export import AUTO_RELABEL, ExportError
from engine.review.findings import OUTLIER_VIEW
from ui import exporting, page, readers

STATUS_HELP = {
    "kept": "you kept the given label",
    "relabeled": "you chose another label",
    "discarded": "you left the image out (no label)",
    "auto-relabeled": "flagged, not reviewed, and changed to the suggestion without a review",
    "needs-review": "flagged, not reviewed: the given label is kept until you decide",
    "unchanged": "not flagged: label kept as given",
    "duplicate-dropped": "a copy of another image with the same label, left out (Leave out copies)",
    "outlier-dropped": "an outlier left out (Leave out outliers); images you kept or relabeled stay",
}
POLICY_HELP = {
    "confident": "only where the evidence clears the bar measured to be right at least 95 % of the time",
    "never": "no label changes without your decision",
    "all": "take the suggestion for every flagged image (measured to make labels worse on clean, low-noise "
           "and photo data: review before you use it)",
}

ctx = page.page_setup("export", "The corrected label of each image: your decision first, else — for a flagged "
                                "image — the suggestion where the chosen rule allows it, else the given label.")
run = page.require_run(ctx)
page.require_results(run, "the corrected labels")
policy = st.radio("Automatic changes", AUTO_RELABEL, horizontal=True, key="export_policy",
                  format_func=lambda p: f"{p} — {POLICY_HELP[p]}" if p == AUTO_RELABEL[0] else p,
                  captions=[POLICY_HELP[p] if p != AUTO_RELABEL[0] else "" for p in AUTO_RELABEL])
with st.container(horizontal=True):
    drop_copies = st.checkbox("Leave out copies", key="export_drop_duplicates",
                              help="Keep one image of each group of near-duplicates whose labels agree "
                                   "(`--drop-duplicates`); groups whose labels disagree stay for review")
    drop_outliers = st.checkbox(f"Leave out outliers (outlier score ≥ {OUTLIER_VIEW})", key="export_drop_outliers",
                                help="The images of Review's \"maybe discard\" view, unless you kept or relabeled "
                                     f"them (`--drop-outliers {OUTLIER_VIEW}`)")
leave_out = exporting.LeaveOut(drop_copies, OUTLIER_VIEW if drop_outliers else None)
try:
    table = exporting.labels_table(run, policy, leave_out)
except ExportError as e:
    st.error(f"Cannot export this run: {e}")
    st.stop()

counts = table["status"].value_counts()
st.info(accuracy_line(label_accuracy(readers.samples(run), table)))
cols = st.columns(len(STATUS_HELP))
for col, (status, help_text) in zip(cols, STATUS_HELP.items(), strict=True):
    col.metric(status, f"{int(counts.get(status, 0)):,}", help=help_text)
st.caption(" · ".join(f"**{status}**: {help_text}" for status, help_text in STATUS_HELP.items()))

statuses = st.multiselect("Show", list(STATUS_HELP), default=[s for s in STATUS_HELP if s != "unchanged"],
                          key="export_filter", persist_state="session")
preview = table[table["status"].isin(statuses)] if statuses else table
st.dataframe(preview.head(2000), hide_index=True, height=360,
             column_config={"clean_prob": st.column_config.NumberColumn(format="%.2f")})
st.caption(f"{len(preview):,} rows shown of {len(table):,}" + (" (first 2,000 in the preview)" if len(preview) > 2000
                                                                 else ""))

st.subheader("Download")
name = run.path.name
with st.container(horizontal=True):
    st.download_button("labels.csv", exporting.file_bytes(run, "csv", policy, leave_out), file_name=f"{name}_labels.csv",
                       mime="text/csv", icon=":material/table:", on_click="ignore", key="download_csv", type="primary")
    st.download_button("labels.json", exporting.file_bytes(run, "json", policy, leave_out), file_name=f"{name}_labels.json",
                       mime="application/json", icon=":material/data_object:", on_click="ignore", key="download_json")
    st.download_button("Re-sorted folder (.zip)", lambda: exporting.folder_zip_data(run, policy, leave_out),
                       file_name=f"{name}_corrected.zip",
                       mime="application/zip", icon=":material/folder_zip:", on_click="ignore", key="download_zip",
                       help="Class folders named after the corrected labels; discarded and left-out images are not in it")
st.caption(f"The same files as `python -m engine export {run.path} --out FILE --format csv|json|folder "
           f"--auto-relabel {policy}{leave_out.flags()}`.")

page.next_step("train a new run on the corrected folder, or clean another dataset", "data")
