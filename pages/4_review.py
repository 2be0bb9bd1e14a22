"""Review: decide what each flagged image really is — keep, accept the suggestion, relabel or discard.

Every decision is written to RUN/decisions.sqlite the moment it is made (nothing to save, nothing lost
on refresh). Keyboard shortcuts act on the focused card (highlighted); clicks act on their own card.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.review.decisions import DecisionStore
from engine.runs.rundir import RunDir
from ui import page, readers, review
from ui.thumbs import thumbnail

PAGE_SIZE = 24
GRID_COLUMNS = 4
THUMB_PX = 150
FOCUS_KEY = "review_focus"  # position of the focused card in the filtered queue
FOCUS_RUN_KEY = "review_focus_run"  # the run FOCUS_KEY belongs to
ADVANCE_KEY = "review_advance"  # (path, position) of the card just decided: focus moves past it
UNDO_KEY = "review_undo"  # {run id: [UndoEntry, ...]} actions of this browser session
UNDO_DEPTH = 200  # actions each tab can step back through
FLASH_KEY = "review_flash"  # one-line feedback shown after an action
SCOPE_KEY = "review_scope"  # Inspect sets it to "selection" when it sends images here
STATUS_BADGES = {"not reviewed": ":gray-badge[not reviewed]", "kept": ":green-badge[:material/check: kept]",
                 "relabeled": ":blue-badge[:material/edit: relabeled]",
                 "discarded": ":red-badge[:material/delete: discarded]"}


# ----------------------------------------------------------------------------- actions (callbacks)


def act(run_path: str, action: review.ReviewAction, paths: tuple[str, ...], label: str | None = None,
        advance: tuple[str, int] | None = None) -> None:
    """The one code path of every review action: click, batch or keyboard."""
    run = RunDir(Path(run_path))
    frame = readers.samples(run)
    if frame is None or not paths:
        return
    rows = frame[frame["path"].isin(set(paths))]
    try:
        entry = review.apply_action(DecisionStore(run.decisions), rows, action, label=label,
                                    source=page.session_id())
    except ValueError as e:
        st.session_state[FLASH_KEY] = f":material/warning: {e}"
        return
    if entry is not None:
        stack = st.session_state.setdefault(UNDO_KEY, {}).setdefault(run.path.name, [])
        stack.append(entry)
        del stack[:-UNDO_DEPTH]
        st.session_state[FLASH_KEY] = f":material/check: {entry.description[0].upper()}{entry.description[1:]}."
    if advance is not None:
        st.session_state[ADVANCE_KEY] = advance


def undo_last(run_path: str) -> None:
    run = RunDir(Path(run_path))
    stack = st.session_state.setdefault(UNDO_KEY, {}).get(run.path.name) or []
    if not stack:
        st.session_state[FLASH_KEY] = "Nothing to undo in this tab."
        return
    entry = stack.pop()
    result = review.undo(DecisionStore(run.decisions), entry, source=page.session_id())
    st.session_state[FLASH_KEY] = f":material/undo: {review.undo_message(entry, result)}"


def relabel_from_widget(run_path: str, key: str, path: str, position: int) -> None:
    label = st.session_state.get(key)
    if label:
        act(run_path, "relabel", (path,), label=label, advance=(path, position))
    st.session_state[key] = None


def batch(run_path: str, action: review.ReviewAction, page_items: tuple[tuple[int, str], ...],
          label_key: str | None = None) -> None:
    chosen = tuple(path for index, path in page_items if st.session_state.get(f"sel_{index}"))
    if not chosen:
        st.session_state[FLASH_KEY] = "Select some images first (the checkbox on each card)."
        return
    label = st.session_state.get(label_key) if label_key else None
    if action == "relabel" and not label:
        st.session_state[FLASH_KEY] = "Pick the class to relabel the selected images to."
        return
    act(run_path, action, chosen, label=label)
    for index, _ in page_items:
        st.session_state[f"sel_{index}"] = False


def select_page(page_items: tuple[tuple[int, str], ...], value: bool) -> None:
    for index, _ in page_items:
        st.session_state[f"sel_{index}"] = value


def move_focus(position: int) -> None:
    st.session_state[FOCUS_KEY] = max(0, position)


def forget_selection(run_path: str) -> None:
    review.clear_selection(RunDir(Path(run_path)))
    st.session_state[SCOPE_KEY] = "flagged"


# ----------------------------------------------------------------------------- page

ctx = page.page_setup("review", "Flagged images, most suspicious first. Every decision is saved immediately.")
run = page.require_run(ctx)
page.require_results(run, "the review queue")
samples = readers.samples(run)
assert samples is not None
classes = readers.class_names(run, samples)
image_root = readers.image_root(run)
table = review.with_decisions(samples, readers.decisions_frame(run))
reviewed, n_flagged = review.progress_counts(table)
run_path = str(run.path)

st.progress(reviewed / max(n_flagged, 1), text=f"{reviewed:,} / {n_flagged:,} flagged images reviewed")
flash = st.session_state.pop(FLASH_KEY, None)
if flash:
    st.info(flash)

# ----------------------------------------------------------------------------- what to show
selection = review.load_selection(run)
scopes = ["flagged", "all"] + (["selection"] if selection else [])
scope_names = {"flagged": f"Flagged ({n_flagged:,})", "all": f"All images ({len(samples):,})",
               "selection": f"Picked on Inspect: {selection.label}" if selection else ""}
if st.session_state.get(SCOPE_KEY) not in scopes:
    st.session_state[SCOPE_KEY] = "selection" if selection else "flagged"
with st.container(horizontal=True, vertical_alignment="bottom"):
    scope = st.radio("Show", scopes, format_func=scope_names.get, horizontal=True, key=SCOPE_KEY,
                     persist_state="session")
    if selection:
        st.button("Forget the Inspect selection", type="tertiary", icon=":material/close:", on_click=forget_selection,
                  args=(run_path,))
f1, f2, f3 = st.columns(3)
given_filter = f1.multiselect("Given class", classes, key="filter_given", placeholder="any",
                              persist_state="session")
suggested_filter = f2.multiselect("Suggested class", classes, key="filter_suggested", placeholder="any",
                                  persist_state="session")
status_filter = f3.multiselect("Status", review.STATUSES, key="filter_status", placeholder="any",
                               persist_state="session")
queue = review.review_queue(table, scope=scope, selection=selection.paths if selection else None,
                            given=given_filter, suggested=suggested_filter, statuses=status_filter)
if queue.empty:
    st.success("Nothing to review with these filters." if n_flagged else "No image was flagged in this run.")
    page.next_step("fine-tune with your decisions, or export the corrected labels", "finetune")
    st.stop()

# ----------------------------------------------------------------------------- focus and paging
if st.session_state.get(FOCUS_RUN_KEY) != run.path.name:  # another run: start at its top card
    st.session_state[FOCUS_RUN_KEY] = run.path.name
    st.session_state[FOCUS_KEY] = 0
positions = pd.Series(range(len(queue)), index=queue["path"].to_numpy())
advance = st.session_state.pop(ADVANCE_KEY, None)
if advance is not None:
    path, old = advance
    # Still in the queue: step past it. Filtered out by its new status: the next card took its place.
    st.session_state[FOCUS_KEY] = int(positions[path]) + 1 if path in positions.index else old
focus = min(max(0, int(st.session_state.get(FOCUS_KEY, 0))), len(queue) - 1)
st.session_state[FOCUS_KEY] = focus
n_pages = math.ceil(len(queue) / PAGE_SIZE)
page_no = focus // PAGE_SIZE
start = page_no * PAGE_SIZE
shown = queue.iloc[start:start + PAGE_SIZE]
focused = queue.iloc[focus]
# (samples.csv index, path) of the cards on this page: widget keys use the index (stable, short)
page_items = tuple(zip(shown["index"].astype(int).tolist(), shown["path"].tolist(), strict=True))
focus_path = str(focused["path"])
focus_advance = (focus_path, focus)

# ----------------------------------------------------------------------------- keyboard toolbar (focused card)
st.markdown(f"**Focused card {focus + 1:,} of {len(queue):,}:** `{Path(focus_path).name}` — given "
            f"**{focused['given_label']}**, suggested **{focused['suggested_label']}**")
with st.container(horizontal=True):
    st.button("Keep given", shortcut="K", key="kb_keep", icon=":material/check:", on_click=act,
              args=(run_path, "keep", (focus_path,)), kwargs={"advance": focus_advance})
    st.button("Accept suggestion", shortcut="A", key="kb_accept", icon=":material/done_all:", on_click=act,
              args=(run_path, "accept", (focus_path,)), kwargs={"advance": focus_advance})
    st.button("Discard", shortcut="D", key="kb_discard", icon=":material/delete:", on_click=act,
              args=(run_path, "discard", (focus_path,)), kwargs={"advance": focus_advance})
    st.button("Undo", shortcut="U", key="kb_undo", icon=":material/undo:", on_click=undo_last, args=(run_path,))
    st.button("Previous", shortcut="J", key="kb_prev", icon=":material/chevron_left:", on_click=move_focus,
              args=(focus - 1,))
    st.button("Next", shortcut="L", key="kb_next", icon=":material/chevron_right:", on_click=move_focus,
              args=(focus + 1,))
    st.button("←", shortcut="Left", key="kb_left", type="tertiary", on_click=move_focus, args=(focus - 1,))
    st.button("→", shortcut="Right", key="kb_right", type="tertiary", on_click=move_focus, args=(focus + 1,))
with st.container(horizontal=True):
    for i, cls in enumerate(classes[:9]):
        st.button(f"{i + 1} · {cls}", shortcut=str(i + 1), key=f"kb_class_{i + 1}", type="tertiary",
                  on_click=act, args=(run_path, "relabel", (focus_path,)),
                  kwargs={"label": cls, "advance": focus_advance})
st.caption("Keyboard: **K** keep given label · **A** accept suggestion · **D** discard · **1–9** relabel to that "
           "class · **J / ←** previous · **L / →** next · **U** undo · **PageUp / PageDown** change page. "
           "Keys act on the highlighted card.")

# ----------------------------------------------------------------------------- batch actions and paging
with st.container(horizontal=True, vertical_alignment="bottom"):
    st.button("Select all on page", key="select_all", icon=":material/select_all:", on_click=select_page,
              args=(page_items, True))
    st.button("Clear selection", key="select_none", type="tertiary", on_click=select_page, args=(page_items, False))
    st.button("Keep selected", key="batch_keep", on_click=batch, args=(run_path, "keep", page_items))
    st.button("Accept selected", key="batch_accept", on_click=batch, args=(run_path, "accept", page_items))
    st.button("Discard selected", key="batch_discard", on_click=batch, args=(run_path, "discard", page_items))
    st.selectbox("Relabel selected to", classes, index=None, key="batch_label", placeholder="class…",
                 width=180)
    st.button("Relabel selected", key="batch_relabel", on_click=batch,
              args=(run_path, "relabel", page_items, "batch_label"))

# ----------------------------------------------------------------------------- the grid
focus_in_page = focus - start
st.html(f"<style>.st-key-card_{focus_in_page} {{border: 3px solid #2f6f4f !important; "
        "background: #eef6f1;}}</style>")
grid = st.columns(GRID_COLUMNS)
for slot, ((index, path), (_, row)) in enumerate(zip(page_items, shown.iterrows(), strict=True)):
    position = start + slot
    with grid[slot % GRID_COLUMNS].container(border=True, key=f"card_{slot}"):
        if image_root is not None:
            st.image(thumbnail(str(image_root / path), THUMB_PX), width=THUMB_PX)
        st.markdown(f"**{Path(path).name}**  \n{STATUS_BADGES.get(row['status'], row['status'])}"
                    + (f" → **{row['decision_label']}**" if row["status"] == "relabeled" else ""))
        suggested_prob = row.get("suggested_prob")
        prob = f" ({float(suggested_prob):.2f})" if suggested_prob is not None and not pd.isna(suggested_prob) else ""
        st.markdown(f"given **{row['given_label']}**  \nsuggested **{row['suggested_label']}**{prob}")
        st.caption(f"top-3: {review.top3_text(row)}  \nclean prob {float(row['clean_prob']):.2f}")
        st.checkbox("select", key=f"sel_{index}")
        advance_here = (path, position)
        with st.container(horizontal=True, gap="small"):
            st.button("Keep", key=f"keep_{index}", on_click=act, args=(run_path, "keep", (path,)),
                      kwargs={"advance": advance_here}, help="Keep the given label")
            st.button("Accept", key=f"accept_{index}", on_click=act, args=(run_path, "accept", (path,)),
                      kwargs={"advance": advance_here}, help="Relabel to the suggested label")
            st.button("Discard", key=f"discard_{index}", on_click=act, args=(run_path, "discard", (path,)),
                      kwargs={"advance": advance_here}, help="Leave this image out")
            st.button("Focus", key=f"focus_{index}", type="tertiary", icon=":material/center_focus_strong:",
                      on_click=move_focus, args=(position,), help="Make this the card the keyboard acts on")
        st.selectbox("Relabel to", classes, index=None, key=f"relabel_{index}", placeholder="relabel to…",
                     label_visibility="collapsed", on_change=relabel_from_widget,
                     args=(run_path, f"relabel_{index}", path, position))

with st.container(horizontal=True, vertical_alignment="center"):
    st.button("Previous page", key="page_prev", shortcut="PageUp", icon=":material/navigate_before:",
              disabled=page_no == 0, on_click=move_focus, args=(start - PAGE_SIZE,))
    st.markdown(f"Page {page_no + 1} of {n_pages} · images {start + 1:,}–{start + len(shown):,} of {len(queue):,}")
    st.button("Next page", key="page_next", shortcut="PageDown", icon=":material/navigate_next:",
              disabled=page_no >= n_pages - 1, on_click=move_focus, args=(start + PAGE_SIZE,))

page.next_step("fine-tune with your decisions (or go straight to Export)", "finetune")
