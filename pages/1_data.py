"""Data: choose the images to clean — the bundled sample, a .zip, a folder, or a path on this server."""

from __future__ import annotations

import streamlit as st

from ui import data_sources, datasets, page

ctx = page.page_setup("data", "Choose the images to clean: one sub-folder per class, named after the class.")
sample = datasets.sample_data_path()
data_sources.choose_source(page.current_dataset(), sample)

current = page.current_dataset()  # the dataset of the current run, or the one just chosen, else the sample
if current is None:
    st.info("No dataset chosen yet — pick one of the options above, then train on it.", icon=":material/info:")
    st.stop()
summary = data_sources.summary_for(current)
if summary is None:
    st.stop()
data_sources.intake_report(summary)

page.next_step("train a model on this dataset", "train")
