"""Export: download the corrected labels (CSV, JSON) or the image folder re-sorted by corrected label."""

from __future__ import annotations

import streamlit as st

from engine.review.export import ExportError
from ui import exporting, page

STATUS_HELP = {
    "kept": "you kept the given label",
    "relabeled": "you chose another label",
    "discarded": "you left the image out (no label)",
    "auto-relabeled": "flagged, not reviewed, and the suggestion differs from the given label: the suggestion is used",
    "unchanged": "label kept as given (not flagged, or flagged but the suggestion is the given label)",
}

ctx = page.page_setup("export", "The corrected label of each image: your decision first, else the suggestion for "
                                "flagged images, else the given label.")
run = page.require_run(ctx)
page.require_results(run, "the corrected labels")
try:
    table = exporting.labels_table(run)
except ExportError as e:
    st.error(f"Cannot export this run: {e}")
    st.stop()

counts = table["status"].value_counts()
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
    st.download_button("labels.csv", exporting.file_bytes(run, "csv"), file_name=f"{name}_labels.csv",
                       mime="text/csv", icon=":material/table:", on_click="ignore", key="download_csv", type="primary")
    st.download_button("labels.json", exporting.file_bytes(run, "json"), file_name=f"{name}_labels.json",
                       mime="application/json", icon=":material/data_object:", on_click="ignore", key="download_json")
    st.download_button("Re-sorted folder (.zip)", lambda: exporting.folder_zip_data(run),
                       file_name=f"{name}_corrected.zip",
                       mime="application/zip", icon=":material/folder_zip:", on_click="ignore", key="download_zip",
                       help="Class folders named after the corrected labels; discarded images are left out")
st.caption(f"The same files as `python -m engine export {run.path} --out FILE --format csv|json|folder`.")

page.next_step("train a new run on the corrected folder, or clean another dataset", "data")
