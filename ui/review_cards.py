"""What the Review page draws: the keyboard toolbar, the class keys, the batch bar, the card grid, the pager.

Every button calls back into `ui.review_actions`; nothing here writes decisions itself. Each card says why
it was flagged (ui.review_evidence).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ui import class_keys, review
from ui import review_actions as actions
from ui.cursor import ReviewCursor
from ui.review_evidence import Evidence, copies_strip, evidence_line, nearest_popover
from ui.thumbs import thumbnail

GRID_COLUMNS = 4
THUMB_PX = 150
NAME_CHARS = 24  # a card's width in bold characters, about
STATUS_BADGES = {"not reviewed": ":gray-badge[not reviewed]", "kept": ":green-badge[:material/check: kept]",
                 "relabeled": ":blue-badge[:material/edit: relabeled]",
                 "discarded": ":red-badge[:material/delete: discarded]",
                 "skipped": ":orange-badge[:material/help: skipped]"}


def toolbar(run_path: str, queue: pd.DataFrame, cursor: ReviewCursor, classes: list[str]) -> None:
    """The focused card's line and the buttons its keyboard shortcuts press."""
    focused = queue.iloc[cursor.position]
    path = str(focused["path"])
    decided = {"decided": (path, cursor.position)}
    st.markdown(f"**Focused card {cursor.position + 1:,} of {len(queue):,}:** `{Path(path).name}` — given "
                f"**{focused['given_label']}**, suggested **{focused['suggested_label']}**")
    with st.container(horizontal=True):
        st.button("Keep given", shortcut="K", key="kb_keep", icon=":material/check:", on_click=actions.act,
                  args=(run_path, "keep", (path,)), kwargs=decided)
        st.button("Accept suggestion", shortcut="A", key="kb_accept", icon=":material/done_all:", on_click=actions.act,
                  args=(run_path, "accept", (path,)), kwargs=decided)
        st.button("Discard", shortcut="D", key="kb_discard", icon=":material/delete:", on_click=actions.act,
                  args=(run_path, "discard", (path,)), kwargs=decided)
        st.button("Skip / unsure", shortcut="S", key="kb_skip", icon=":material/help:", on_click=actions.act,
                  args=(run_path, "skip", (path,)), kwargs=decided,
                  help="Not sure: recorded, not used in training, shown again at the end of the queue")
        st.button("Undo", shortcut="U", key="kb_undo", icon=":material/undo:", on_click=actions.undo_last,
                  args=(run_path,))
        for key, label, shortcut, icon, step in (("kb_prev", "Previous", "J", ":material/chevron_left:", -1),
                                                 ("kb_next", "Next", "L", ":material/chevron_right:", 1)):
            st.button(label, shortcut=shortcut, key=key, icon=icon, on_click=actions.move_to,
                      args=(cursor.position + step,))
        st.button("←", shortcut="Left", key="kb_left", type="tertiary", on_click=actions.move_to,
                  args=(cursor.position - 1,))
        st.button("→", shortcut="Right", key="kb_right", type="tertiary", on_click=actions.move_to,
                  args=(cursor.position + 1,))
    _class_keys(run_path, path, cursor.position, classes)


def _class_keys(run_path: str, path: str, position: int, classes: list[str]) -> None:
    """One button per class key (digit classes: the digit; else 1–9, 0), a search box for the rest."""
    with st.container(horizontal=True, vertical_alignment="center"):
        for key, cls in class_keys.class_keys(classes):
            st.button(f"{key} · {cls}", shortcut=key, key=f"kb_class_{key}", type="tertiary", on_click=actions.act,
                      args=(run_path, "relabel", (path,)), kwargs={"label": cls, "decided": (path, position)})
        if class_keys.without_key(classes):
            st.selectbox("Relabel the highlighted card", classes, index=None, key="kb_relabel",
                         placeholder="type a class name…", width=240, on_change=actions.relabel_from_widget,
                         args=(run_path, "kb_relabel", path, position))
    st.caption("Keyboard: **K** keep given label · **A** accept suggestion · **D** discard · "
               "**S** skip (unsure: shown again at the end) · "
               f"{class_keys.legend(classes)} · **J / ←** previous · **L / →** next · **U** undo · "
               "**PageUp / PageDown** change page. Keys act on the highlighted card.")


def batch_bar(run_path: str, page_items: actions.PageItems, classes: list[str], *, suffix: str = "") -> None:
    """Actions on the ticked cards of this page, with how many are ticked (drawn above and below the grid)."""
    n = len(actions.selected(page_items))
    with st.container(horizontal=True, vertical_alignment="center"):
        st.markdown(f"**{n} of {len(page_items)} ticked**" if n else "Tick cards to act on several at once:")
        st.button("Select all on page", key=f"select_all{suffix}", icon=":material/select_all:",
                  on_click=actions.select_page, args=(page_items, True))
        st.button("Clear selection", key=f"select_none{suffix}", type="tertiary", on_click=actions.select_page,
                  args=(page_items, False), disabled=not n)
        for action, label in (("keep", "Keep"), ("accept", "Accept"), ("discard", "Discard"), ("skip", "Skip")):
            st.button(f"{label} {n} selected" if n else f"{label} selected", key=f"batch_{action}{suffix}",
                      on_click=actions.batch, args=(run_path, action, page_items), disabled=not n)
        st.selectbox("Relabel selected to", classes, index=None, key=f"batch_label{suffix}", placeholder="class…",
                     width=180, label_visibility="collapsed")
        st.button(f"Relabel {n} selected" if n else "Relabel selected", key=f"batch_relabel{suffix}",
                  on_click=actions.batch, args=(run_path, "relabel", page_items, f"batch_label{suffix}"),
                  disabled=not n)


def grid(run_path: str, shown: pd.DataFrame, cursor: ReviewCursor, classes: list[str],
         image_root: Path | None, evidence: Evidence) -> None:
    """The cards of this page; the focused one is highlighted."""
    st.html(f"<style>.st-key-card_{cursor.slot} {{border: 3px solid #2f6f4f !important; "
            "background: #eef6f1;}}</style>")
    columns = st.columns(GRID_COLUMNS)
    for slot, (_, row) in enumerate(shown.iterrows()):
        with columns[slot % GRID_COLUMNS].container(border=True, key=f"card_{slot}"):
            _card(run_path, row, cursor.page_start + slot, classes, image_root, evidence)


def _card(run_path: str, row: pd.Series, position: int, classes: list[str], image_root: Path | None,
          evidence: Evidence) -> None:
    index, path = int(row["index"]), str(row["path"])
    if image_root is not None:
        st.image(thumbnail(str(image_root / path), THUMB_PX), width=THUMB_PX)
    name = Path(path).name
    short = review.short_name(name, NAME_CHARS)
    st.markdown(f"**{short}**  \n{STATUS_BADGES.get(row['status'], row['status'])}"
                + (f" → **{row['decision_label']}**" if row["status"] == "relabeled" else ""),
                help=path if short != name else None)
    prob = row.get("suggested_prob")
    prob_text = f" ({float(prob):.2f})" if prob is not None and not pd.isna(prob) else ""
    st.markdown(f"given **{row['given_label']}**  \nsuggested **{row['suggested_label']}**{prob_text}")
    st.caption(f"top-3: {review.top3_text(row)}  \n{evidence_line(row, evidence)}")
    copies_strip(row, evidence)
    nearest_popover(row, evidence)
    st.checkbox("select", key=actions.selection_key(index))
    decided = {"decided": (path, position)}
    with st.container(horizontal=True, gap="small"):
        st.button("Keep", key=f"keep_{index}", on_click=actions.act, args=(run_path, "keep", (path,)),
                  kwargs=decided, help="Keep the given label")
        st.button("Accept", key=f"accept_{index}", on_click=actions.act, args=(run_path, "accept", (path,)),
                  kwargs=decided, help="Relabel to the suggested label")
        st.button("Discard", key=f"discard_{index}", on_click=actions.act, args=(run_path, "discard", (path,)),
                  kwargs=decided, help="Leave this image out")
        st.button("Skip", key=f"skip_{index}", on_click=actions.act, args=(run_path, "skip", (path,)),
                  kwargs=decided, help="Not sure: shown again at the end of the queue, not used in training")
        st.button("Focus", key=f"focus_{index}", type="tertiary", icon=":material/center_focus_strong:",
                  on_click=actions.move_to, args=(position,), help="Make this the card the keyboard acts on")
    st.selectbox("Relabel to", classes, index=None, key=f"relabel_{index}", placeholder="relabel to…",
                 label_visibility="collapsed", on_change=actions.relabel_from_widget,
                 args=(run_path, f"relabel_{index}", path, position))


def pager(cursor: ReviewCursor, n: int) -> None:
    start, stop, n_pages = cursor.page_start, cursor.page_stop(n), cursor.n_pages(n)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Previous page", key="page_prev", shortcut="PageUp", icon=":material/navigate_before:",
                  disabled=cursor.page == 0, on_click=actions.previous_page)
        st.markdown(f"Page {cursor.page + 1} of {n_pages} · images {start + 1:,}–{stop:,} of {n:,}")
        st.button("Next page", key="page_next", shortcut="PageDown", icon=":material/navigate_next:",
                  disabled=cursor.page >= n_pages - 1, on_click=actions.next_page)
