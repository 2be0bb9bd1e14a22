"""Review: decide what each flagged image really is — keep, accept the suggestion, relabel, discard or skip.

Every decision is written to RUN/decisions.sqlite the moment it is made (nothing to save, nothing lost
on refresh), and remembered in the workspace for later runs on the same images. Keyboard shortcuts act on
the focused card (highlighted); clicks act on their own card. Answered images leave the queue (the cards
decided in this tab stay in place until the page is opened afresh); skipped ones come back at its end.
"""

from __future__ import annotations

import streamlit as st

from engine.review import findings
from ui import page, readers, review, review_cards, review_loop
from ui import review_actions as actions
from ui.review_evidence import Evidence

ctx = page.page_setup("review", "Flagged images, most suspicious first. Every decision is saved immediately.")
run = page.require_run(ctx)
page.require_results(run, "the review queue")
samples = readers.review_samples(run)
assert samples is not None
cfg = readers.run_config(run)
classes = readers.class_names(run, samples)
decisions = readers.decisions_frame(run, include_skipped=True)
table = review.with_decisions(samples, decisions)
reviewed, n_flagged = review.progress_counts(table)
run_path = str(run.path)

st.progress(reviewed / max(n_flagged, 1), text=f"{reviewed:,} / {n_flagged:,} flagged images reviewed")
review_loop.memory_line(cfg, decisions)
flash = actions.take_flash()
if flash:
    st.info(flash)
review_loop.rerank_bar(run, cfg, actions.current_decisions(run))

# ----------------------------------------------------------------------------- what to show
selection = review.load_selection(run)
n_outliers = findings.finding_counts(samples)["outliers"]
scopes = ["flagged", "all"] + (["outliers"] if n_outliers else []) + (["selection"] if selection else [])
scope_names = {"flagged": f"Flagged ({n_flagged:,})", "all": f"All images ({len(samples):,})",
               "outliers": f"Maybe discard: outliers ({n_outliers:,})",
               "selection": f"Picked on Inspect: {selection.label}" if selection else ""}
actions.scope_choice(scopes, "selection" if selection else "flagged")
with st.container(horizontal=True, vertical_alignment="bottom"):
    scope = st.radio("Show", scopes, format_func=scope_names.get, horizontal=True, key=actions.SCOPE_KEY,
                     persist_state="session")
    if selection:
        st.button("Forget the Inspect selection", type="tertiary", icon=":material/close:",
                  on_click=actions.forget_selection, args=(run_path,))
actions.remember_scope(scope)
f1, f2, f3 = st.columns(3)
given_filter = f1.multiselect("Given class", classes, key="filter_given", placeholder="any",
                              persist_state="session")
suggested_filter = f2.multiselect("Suggested class", classes, key="filter_suggested", placeholder="any",
                                  persist_state="session")
status_filter = f3.multiselect("Status", review.STATUSES, key="filter_status", placeholder="any",
                               persist_state="session")
show_reviewed, top = review_loop.queue_controls()
review_loop.class_table(table, top)
queue = review.review_queue(table, scope=scope, selection=selection.paths if selection else None,
                            given=given_filter, suggested=suggested_filter, statuses=status_filter,
                            include_reviewed=show_reviewed, top=top, pinned=actions.pinned(run))
if queue.empty:
    st.success("Nothing left to review with these filters (answered images show with *Show reviewed*)."
               if n_flagged else "No image was flagged in this run.")
    page.next_step("fine-tune with your decisions, or export the corrected labels", "finetune")
    st.stop()

# ----------------------------------------------------------------------------- the focused card and its page
cursor = actions.placed_cursor(run.path.name, queue["path"].tolist())
shown = queue.iloc[cursor.page_start:cursor.page_stop(len(queue))]
page_items = tuple(zip(shown["index"].astype(int).tolist(), shown["path"].tolist(), strict=True))
evidence = Evidence.of(samples, readers.neighbours(run, len(samples)), readers.image_root(run))

review_cards.toolbar(run_path, queue, cursor, classes)
review_cards.batch_bar(run_path, page_items, classes)
review_cards.grid(run_path, shown, cursor, classes, readers.image_root(run), evidence)
review_cards.batch_bar(run_path, page_items, classes, suffix="_below")  # reachable without scrolling back up
review_cards.pager(cursor, len(queue))

page.next_step("fine-tune with your decisions (or go straight to Export)", "finetune")
