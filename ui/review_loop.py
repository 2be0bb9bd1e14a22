"""The review loop around the cards: what the run started with, the re-ranking, the flag budget, the
per-class counts.

* Memory: how many decisions this run started with from earlier runs on the same images (source
  "memory"), or that it opted out (`fit --no-memory`).
* Re-ranking (engine.method.rerank, run by `python -m engine rerank RUN` in the background): when the
  queue was last re-ranked and with how many decisions; "Re-rank now"; while one runs, a small fragment
  watches it and reruns the page once it is done, so the new order shows without a click.
* Budget and reviewed images: "Show the N most suspicious" (0: every flagged image) and "Show reviewed".
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from engine.config import RunConfig
from engine.review import queue
from engine.review.memory import MEMORY_SOURCE
from engine.runs import jobs
from engine.runs.rundir import RunDir
from ui import readers, review
from ui import review_actions as actions
from ui.progress import format_seconds

TOP_KEY = "review_top"  # the flag budget (0 = none)
SHOW_REVIEWED_KEY = "review_show_reviewed"


def memory_line(cfg: RunConfig, decisions: pd.DataFrame) -> None:
    if not cfg.review.memory:
        st.caption(":material/history_toggle_off: This run does not use the workspace's decision memory "
                   "(`fit --no-memory`): its decisions stay in this run.")
        return
    n = int((decisions["source"] == MEMORY_SOURCE).sum()) if len(decisions) else 0
    if n:
        st.caption(f":material/history: This run started with **{n:,}** {'decision' if n == 1 else 'decisions'} "
                   "remembered from earlier runs on the same images (matched by file content).")


def rerank_bar(run: RunDir, cfg: RunConfig, decisions: dict) -> None:
    """The re-ranking's state and the button that starts one."""
    running = jobs.rerank_running(run.path)
    with st.container(horizontal=True, vertical_alignment="center"):
        if running:
            _watch(run)
        else:
            st.caption(_rerank_text(run, cfg, decisions))
        st.button("Re-rank now", key="rerank_now", icon=":material/autorenew:", type="tertiary", disabled=running,
                  on_click=actions.rerank_now, args=(str(run.path),),
                  help="Refit a classifier head on the cached features with your decisions as trusted labels: "
                       "new suggestions and a new order for the images not reviewed yet (seconds)")
    record = readers.rerank_record(run) or {}
    if record.get("error") and not running:
        st.warning(f"The last re-ranking failed: {record['error']}", icon=":material/warning:")


def _watch(run: RunDir) -> None:
    @st.fragment(run_every="2s")
    def watching() -> None:
        if jobs.rerank_running(run.path):
            st.caption(":material/autorenew: Re-ranking with your decisions… the new order shows when it is done.")
        else:
            st.rerun()  # done: the whole page picks up the new order

    watching()


def _rerank_text(run: RunDir, cfg: RunConfig, decisions: dict) -> str:
    every = cfg.review.rerank_every
    current = readers.current_rerank(run)
    record = readers.rerank_record(run) or {}
    since = queue.decisions_since(current, decisions)
    later = (f"next after {max(every - since, 0)} more" if every > 0 else "automatic re-ranking is off "
             "(review.rerank_every=0)")
    if current is None:
        return (f"Order and suggestions from the fit; re-ranked with your decisions after every {every} decisions "
                f"({later})." if every > 0 else f"Order and suggestions from the fit; {later}.")
    n = int(record.get("decisions") or 0) + int(record.get("discarded") or 0)  # a discard is a decision too
    return (f":material/autorenew: Order and suggestions re-ranked with {n:,} {'decision' if n == 1 else 'decisions'} "
            f"{_ago(record.get('at'))}; {later}.")


def _ago(at: object) -> str:
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(str(at))).total_seconds()
    except ValueError:
        return ""
    return f"{format_seconds(seconds)} ago"


def queue_controls() -> tuple[bool, int | None]:
    """("Show reviewed", the flag budget or None). No upper bound: the value stays valid on every run."""
    with st.container(horizontal=True, vertical_alignment="bottom"):
        top = st.number_input("Show the N most suspicious", min_value=0, step=10, key=TOP_KEY, width=220,
                              help="A flag budget: review only the N most suspicious flagged images (those "
                                   "already answered count first); 0 = every flagged image. `python -m engine "
                                   "export RUN --top N` leaves exactly these flagged.")
        show_reviewed = st.toggle("Show reviewed", key=SHOW_REVIEWED_KEY,
                                  help="Also show the images already kept, relabeled or discarded")
    return bool(show_reviewed), int(top or 0) or None


def class_table(table: pd.DataFrame, top: int | None) -> None:
    """Flagged / reviewed / skipped / left per given class (and left in the budget when one is set)."""
    counts = review.class_counts(table, queue.in_budget(table, top) if top else None)
    if counts.empty:
        return
    with st.expander(f"Per class: flagged, reviewed and left ({len(counts)} classes)"):
        st.dataframe(counts, hide_index=True)
