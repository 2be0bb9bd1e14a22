"""The Review page's callbacks and what this tab remembers between reruns: cursor, undo history, scope,
the cards it decided.

Every click, batch and keyboard shortcut goes through `act`, which writes to the run's decision store
through the workspace memory (engine.review.memory.open_run_store: the run's store commits first, then
the memory remembers it for later runs on the same images), moves the cursor (`ui.cursor.ReviewCursor`)
and, every `review.rerank_every` decisions, starts a re-ranking of the queue in the background
(engine.runs.jobs.start_rerank). Session keys live here and nowhere else, so the Inspect page sends
images to Review through `open_in_review`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import streamlit as st

from engine.review import memory, queue
from engine.review.decisions import Decision, load_decisions
from engine.runs import jobs
from engine.runs.rundir import RunDir
from ui import page, readers, review
from ui.cursor import ReviewCursor

CURSOR_KEY = "review_cursor"  # the ReviewCursor of this tab
UNDO_KEY = "review_undo"  # {run id: [UndoEntry, ...]} actions of this browser session
UNDO_DEPTH = 200  # actions each tab can step back through
FLASH_KEY = "review_flash"  # one-line feedback shown after an action
PINNED_KEY = "review_pinned"  # {run id: {path: suspicion shown}} cards decided in this tab: they stay in place
SCOPE_KEY = "review_scope"  # what the queue shows: flagged, all, or the selection sent from Inspect
SCOPE_PARAM = "show"  # ... mirrored in the URL, so that a refresh shows what was picked

PageItems = tuple[tuple[int, str], ...]  # (samples.csv index, path) of the cards on the page


# ----------------------------------------------------------------------------- the cursor


def cursor() -> ReviewCursor:
    return st.session_state.get(CURSOR_KEY) or ReviewCursor()


def _set_cursor(value: ReviewCursor) -> None:
    st.session_state[CURSOR_KEY] = value


def placed_cursor(run_id: str, queue: Sequence[str]) -> ReviewCursor:
    """This tab's cursor on `queue` (a run of its own starts at the top), pending moves resolved."""
    value = cursor().on_run(run_id).placed(queue)
    _set_cursor(value)
    return value


def move_to(position: int) -> None:
    _set_cursor(cursor().moved_to(position))


def next_page() -> None:
    _set_cursor(cursor().next_page())


def previous_page() -> None:
    _set_cursor(cursor().previous_page())


# ----------------------------------------------------------------------------- decisions


def act(run_path: str, action: review.ReviewAction, paths: tuple[str, ...], label: str | None = None,
        decided: tuple[str, int] | None = None) -> None:
    """The one code path of every review action: click, batch or keyboard. `decided`: (path, position) of
    the one card decided, which the focus then moves past."""
    run = RunDir(Path(run_path))
    frame = readers.review_samples(run)  # what the cards show: "accept" takes the suggestion on screen
    if frame is None or not paths:
        return
    rows = frame[frame["path"].isin(set(paths))]
    store = memory.open_run_store(run.path)
    try:
        entry = review.apply_action(store, rows, action, label=label, source=page.session_id())
    except ValueError as e:
        st.session_state[FLASH_KEY] = f":material/warning: {e}"
        return
    if entry is not None:
        stack = st.session_state.setdefault(UNDO_KEY, {}).setdefault(run.path.name, [])
        stack.append(entry)
        del stack[:-UNDO_DEPTH]
        st.session_state[FLASH_KEY] = f":material/check: {entry.description[0].upper()}{entry.description[1:]}."
        _pin(run, rows, keep=action != "skip")
    if store.memory_error:
        st.session_state[FLASH_KEY] = f"{st.session_state.get(FLASH_KEY, '')} :material/warning: {store.memory_error}"
    if decided is not None:
        # A skipped card goes to the end of the queue: the card after it takes its place, so the focus stays.
        _set_cursor(cursor().moved_to(decided[1]) if action == "skip" else cursor().after_decision(*decided))
    rerank_if_due(run)


def undo_last(run_path: str) -> None:
    """Undo this tab's last action; the focus returns to the card(s) it put back."""
    run = RunDir(Path(run_path))
    stack = st.session_state.setdefault(UNDO_KEY, {}).get(run.path.name) or []
    if not stack:
        st.session_state[FLASH_KEY] = "Nothing to undo in this tab."
        return
    entry = stack.pop()
    store = memory.open_run_store(run.path)
    result = review.undo(store, entry, source=page.session_id())
    st.session_state[FLASH_KEY] = f":material/undo: {review.undo_message(entry, result)}"
    if store.memory_error:
        st.session_state[FLASH_KEY] += f" :material/warning: {store.memory_error}"
    _set_cursor(cursor().after_undo([c.path for c in entry.changes]))


def relabel_from_widget(run_path: str, key: str, path: str, position: int) -> None:
    label = st.session_state.get(key)
    if label:
        act(run_path, "relabel", (path,), label=label, decided=(path, position))
    st.session_state[key] = None


def selection_key(index: int) -> str:
    return f"sel_{index}"


def selected(page_items: PageItems) -> tuple[str, ...]:
    return tuple(path for index, path in page_items if st.session_state.get(selection_key(index)))


def batch(run_path: str, action: review.ReviewAction, page_items: PageItems, label_key: str | None = None) -> None:
    chosen = selected(page_items)
    if not chosen:
        st.session_state[FLASH_KEY] = "Select some images first (the checkbox on each card)."
        return
    label = st.session_state.get(label_key) if label_key else None
    if action == "relabel" and not label:
        st.session_state[FLASH_KEY] = "Pick the class to relabel the selected images to."
        return
    act(run_path, action, chosen, label=label)
    select_page(page_items, False)


def select_page(page_items: PageItems, value: bool) -> None:
    for index, _ in page_items:
        st.session_state[selection_key(index)] = value


def take_flash() -> str | None:
    return st.session_state.pop(FLASH_KEY, None)


# ----------------------------------------------------------------------------- cards decided here


def _pin(run: RunDir, rows, *, keep: bool) -> None:
    """Cards decided in this tab stay where they were shown (until the page is opened afresh); a skipped card
    is let go: it belongs at the end of the queue."""
    pinned = st.session_state.setdefault(PINNED_KEY, {}).setdefault(run.path.name, {})
    for path, value in zip(rows["path"], rows["suspicion"] if "suspicion" in rows else [0.0] * len(rows),
                           strict=True):
        if keep:
            pinned.setdefault(path, float(value))
        else:
            pinned.pop(path, None)


def pinned(run: RunDir) -> dict[str, float]:
    """path -> the suspicion it was shown with, for the cards this tab decided."""
    return dict(st.session_state.get(PINNED_KEY, {}).get(run.path.name, {}))


# ----------------------------------------------------------------------------- re-ranking


def rerank_if_due(run: RunDir) -> None:
    """Start a re-ranking once `review.rerank_every` trusted decisions differ from the last one's."""
    every = readers.run_config(run).review.rerank_every
    if every <= 0 or jobs.rerank_running(run.path):
        return
    if queue.decisions_since(readers.current_rerank(run), current_decisions(run)) >= every:
        _start_rerank(run, automatic=True)


def current_decisions(run: RunDir) -> dict[str, Decision]:
    """Every current decision of the run, skips included ({} before the first one: nothing is created)."""
    return load_decisions(run.decisions, include_skipped=True)


def rerank_now(run_path: str) -> None:
    _start_rerank(RunDir(Path(run_path)), automatic=False)


def _start_rerank(run: RunDir, *, automatic: bool) -> None:
    try:
        pid = jobs.start_rerank(run.path)
    except jobs.JobError as e:
        st.session_state[FLASH_KEY] = f":material/warning: Could not re-rank: {e}"
        return
    if pid is None and not automatic:
        st.session_state[FLASH_KEY] = "A re-ranking is already running: its order shows when it is done."


# ----------------------------------------------------------------------------- what the queue shows


def scope_choice(scopes: Sequence[str], default: str) -> None:
    """Before the "Show" radio: its value this session, else the URL's (a refresh), else `default`."""
    if st.session_state.get(SCOPE_KEY) not in scopes:
        from_url = st.query_params.get(SCOPE_PARAM)
        st.session_state[SCOPE_KEY] = from_url if from_url in scopes else default


def remember_scope(scope: str) -> None:
    """After the radio: the URL says what is shown (pages switches clear the URL, so on every rerun)."""
    if st.query_params.get(SCOPE_PARAM) != scope:
        st.query_params[SCOPE_PARAM] = scope


def forget_selection(run_path: str) -> None:
    review.clear_selection(RunDir(Path(run_path)))
    st.session_state[SCOPE_KEY] = "flagged"


def open_in_review(run: RunDir, paths: Sequence[str], label: str) -> None:
    """Send images picked on Inspect to the Review page, focused on the first of them."""
    review.save_selection(run, paths, label)
    st.session_state[SCOPE_KEY] = "selection"
    _set_cursor(ReviewCursor(run=run.path.name))
    st.switch_page(page.PAGES["review"][0])
