"""Inspect: the evidence behind the flags — loss mixture, clean/noisy split, embedding map, confusions."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.review import findings
from engine.review.estimate import ROUGH_COUNT, accuracy_line, competence_bar, count_is_rough, label_accuracy
from ui import charts, exporting, page, readers, review_actions, wording

COLOUR_CHOICES = {"given": "given label", "suggested": "suggested label", "clean": "clean probability"}


ctx = page.page_setup("inspect", "Why images were flagged: each image's loss, the fitted mixture, "
                                 "and where the flagged images sit on the embedding map.")
run = page.require_run(ctx)
page.require_results(run, "the evidence")
samples = readers.samples(run)
assert samples is not None
split = readers.json_file(run.split) or {}
metrics = readers.json_file(run.metrics) or {}
classes = readers.class_names(run, samples)
n = len(samples)
n_flagged = int(samples["flagged"].sum())

# ----------------------------------------------------------------------------- headline numbers
shown_metrics = [m for m in ("precision", "recall", "f1", "auroc", "corrected_accuracy") if metrics.get(m) is not None]
cols = st.columns(2 + len(shown_metrics))
cols[0].metric("Images", f"{n:,}")
cols[1].metric("Flagged", f"{n_flagged:,}", f"{100 * n_flagged / max(n, 1):.1f} %", delta_color="off",
               delta_arrow="off")
for col, key in zip(cols[2:], shown_metrics, strict=True):
    col.metric(wording.METRIC_NAMES[key], f"{float(metrics[key]):.3f}", help=wording.METRIC_HELP[key])
found = findings.finding_counts(samples)
f1, f2, f3 = st.columns(3)
f1.metric("Copies with different labels", f"{found['conflicting_groups']:,}",
          help="Groups of near-duplicate images whose given labels disagree: a certain label error, flagged for "
               "review with the copies side by side")
f2.metric("Groups of copies", f"{found['duplicate_groups']:,}",
          help="Exact and near-duplicate images (resized, re-compressed, cropped, mirrored); Export can leave out "
               "all but one of each group whose labels agree")
f3.metric(f"Outliers (score ≥ {findings.OUTLIER_VIEW})", f"{found['outliers']:,}",
          help="Images far from every other image in the feature space, maybe of no class: Review's "
               "\"Maybe discard\" view")
if metrics:
    st.caption(f"Metrics against the truth file: {metrics.get('n_mislabeled', '?')} images are really mislabeled.")
st.info(accuracy_line(label_accuracy(samples, exporting.labels_table(run))) + " (the default export; choose "
        "on Export)")
competence = split.get("competence")
if count_is_rough(split):
    st.caption(f"No label changes by itself in this run: on images it believes clean, the model agrees with the "
               f"labels {competence:.0%} of the time (held out), below the {competence_bar(split):.0%} "
               "it needs before a suggestion may replace a label. Review the flagged images instead.")
    st.caption(ROUGH_COUNT)
if split.get("degenerate"):
    st.warning("The loss mixture is degenerate (one component): the flags are unreliable for this run.")

left, right = st.columns(2)
left.plotly_chart(charts.clean_noisy_figure(samples, classes), key="clean_noisy")
right.plotly_chart(charts.loss_histogram_figure(samples["loss_norm"].to_numpy(), split), key="loss_histogram")

per_class = split.get("per_class") or {}
if per_class:
    st.markdown("**Estimated noise rate per class**")
    noise = pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index()
    st.dataframe(noise, hide_index=True, column_config={
        "noise_rate": st.column_config.ProgressColumn("estimated noise rate", format="percent", min_value=0,
                                                      max_value=1)})

# ----------------------------------------------------------------------------- the embedding map
st.subheader("Embedding map")
coords = readers.umap_coords(run, n)
if coords is None:
    st.info("This run has no embedding map (umap.npy is missing or does not match the images).")
else:
    colour = st.radio("Colour by", list(COLOUR_CHOICES), format_func=COLOUR_CHOICES.get, horizontal=True,
                      key="umap_colour")
    umap = charts.umap_figure(samples, coords, colour, classes)
    event = st.plotly_chart(umap.figure, on_select="rerun", selection_mode=("points", "box", "lasso"),
                            key=f"umap_{colour}")
    if n > charts.MAP_POINTS:
        st.caption(f"The map draws {charts.MAP_POINTS:,} of the {n:,} images, a random sample (the same one on "
                   "every visit); the other views and the review queue cover every image.")
    rows = umap.rows_of(event.selection.points) if event else []
    if len(rows):
        if st.button(f"Review these {len(rows):,} images", type="primary", icon=":material/rule:", key="review_umap"):
            review_actions.open_in_review(run, samples["path"].iloc[rows].tolist(), f"{len(rows):,} images picked on the map")
    else:
        st.caption("Draw a lasso or a box around points (or click one) to review those images.")

# ----------------------------------------------------------------------------- given vs suggested
st.subheader("Given vs suggested label")
table = charts.confusion_counts(samples, classes)
names = [str(c) for c in table.index]


def pick_cell() -> None:
    """A click on a heatmap cell fills the two selectboxes below (they are the keyboard-friendly fallback)."""
    points = st.session_state["confusion"].selection.points
    cell = next((p for p in points if "x" in p and "y" in p), None)
    if cell is not None and str(cell["y"]) in names and str(cell["x"]) in names:
        st.session_state["cell_given"] = str(cell["y"])
        st.session_state["cell_suggested"] = str(cell["x"])


st.plotly_chart(charts.confusion_figure(table), on_select=pick_cell, selection_mode=("points",), key="confusion")
left, right, action = st.columns([2, 2, 3], vertical_alignment="bottom")
biggest = charts.largest_disagreement(table)  # default: the most frequent given → suggested confusion
given = left.selectbox("Given label", names, index=names.index(biggest[0]), key="cell_given")
suggested = right.selectbox("Suggested label", names, index=names.index(biggest[1]), key="cell_suggested")
in_cell = samples[(samples["given_label"] == given) & (samples["suggested_label"] == suggested)]
if action.button(f"Review these {len(in_cell):,} images", disabled=in_cell.empty, key="review_cell",
                 icon=":material/rule:"):
    review_actions.open_in_review(run, in_cell["path"].tolist(), f"given {given} → suggested {suggested}")

page.next_step(f"review the {n_flagged:,} flagged images", "review")
