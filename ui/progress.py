"""The live progress panel of a run: one bar per stage, loss curves, Stop / Resume, the log when it failed.

It polls the run folder with `@st.fragment(run_every="1s")` while the worker is active and with
`run_every=None` once it is not, so an idle page costs nothing; when the worker finishes, the fragment
triggers one full rerun so the rest of the page picks up the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from engine.runs import jobs
from engine.runs import stages as run_stages
from engine.runs.rundir import RunDir
from engine.runs.status import ACTIVE_STATES, RESUMABLE_STATES
from ui import charts

STAGES = {phase: run_stages.phase_stage_names(phase) for phase in run_stages.PHASES}
STAGE_TITLES = {
    "prepare": "Prepare images", "pretrain": "Pre-training (SimCLR)", "warmup": "Warm-up (classifier head)",
    "train": "Training (noise-robust loss)", "predict": "Scoring every image", "split": "Clean/noisy split (GMM)",
    "embed": "Embedding map (UMAP)", "supcon": "Weighted SupCon fine-tuning", "head": "Fresh classifier head",
    "refresh": "Refreshing suggestions",
}
STATE_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/directions_run:",
               "done": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:",
               "interrupted": ":material/pause_circle:"}
# What the panel says instead of the engine's message, which speaks of the command line (`--resume`).
STATE_LINES = {
    "cancelled": "Stopped. **Resume** continues from the last finished epoch.",
    "interrupted": "The worker stopped before the end (the server restarted, or the process was killed). "
                   "**Resume** continues from the last finished epoch.",
}
# Stages whose loss is ELR's when the run trains with it: cross-entropy plus a regulariser that is
# negative by construction (λ·log(1 − ⟨p, t⟩), with ⟨p, t⟩ in (0, 1)).
ELR_STAGES = ("warmup", "train")


@dataclass(frozen=True)
class StageRow:
    stage: str
    state: str  # done | running | skipped | waiting
    fraction: float
    text: str

    @property
    def finished(self) -> bool:
        """Done, or skipped (nothing to do: already done before a resume, turned off, cache up to date)."""
        return self.state in ("done", "skipped")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def stage_rows(status: dict[str, Any], events: list[dict[str, Any]]) -> list[StageRow]:
    """One row per stage of the run's phase, from status.json and the stage events."""
    phase = status.get("phase") or "fit"
    # The worker lists the stages of its phase with their states ({"stage", "state"}); older runs do not.
    listed = [s if isinstance(s, dict) else {"stage": s} for s in status.get("stages") or ()]
    stages = tuple(s["stage"] for s in listed) or STAGES.get(phase, STAGES["fit"])
    done = set(status.get("completed_stages") or ()) | {s["stage"] for s in listed if s.get("state") == "done"}
    events = _since_start(events, status)  # a resumed or repeated phase starts its stages afresh
    skipped = {e["stage"]: e.get("message") for e in events if e.get("kind") == "stage" and e.get("state") == "skipped"}
    skipped.update({s["stage"]: skipped.get(s["stage"]) for s in listed if s.get("state") == "skipped"})
    seconds = {e["stage"]: e.get("seconds") for e in events if e.get("kind") == "stage" and e.get("state") == "done"}
    current = status.get("stage")
    state = status.get("state")
    # Stages run in order: everything before the current stage has finished (or was skipped).
    current_at = stages.index(current) if current in stages else -1
    rows = []
    for i, stage in enumerate(stages):
        title = STAGE_TITLES.get(stage, stage)
        if stage in skipped:
            why = f" ({skipped[stage]})" if skipped[stage] else ""
            rows.append(StageRow(stage, "skipped", 1.0, f"{title} — skipped{why}"))
        elif state == "done" or (stage != current and (stage in done or stage in seconds or i < current_at)):
            took = seconds.get(stage)
            text = f"{title} — done" + (f" in {format_seconds(took)}" if took else "")
            rows.append(StageRow(stage, "done", 1.0, text))
        elif stage == current:
            step, total = int(status.get("step") or 0), int(status.get("total") or 0)
            fraction = min(1.0, step / total) if total > 0 else 0.0
            parts = [title, f"{step}/{total}" if total else "starting"]
            if status.get("images_per_s"):
                parts.append(f"{float(status['images_per_s']):,.0f} images/s")
            if status.get("eta_s") is not None and state in ACTIVE_STATES:
                parts.append(f"ETA {format_seconds(status.get('eta_s'))}")
            label = "running" if state in ACTIVE_STATES else (state or "waiting")
            rows.append(StageRow(stage, label, fraction, " · ".join(parts)))
        else:
            rows.append(StageRow(stage, "waiting", 0.0, f"{title} — waiting"))
    return rows


def _since_start(events: list[dict[str, Any]], status: dict[str, Any]) -> list[dict[str, Any]]:
    """The events written since the worker last started (status.json started_at)."""
    try:
        start = datetime.fromisoformat(status["started_at"]).timestamp() - 1.0  # clock rounding
    except (KeyError, TypeError, ValueError):
        return events
    return [e for e in events if float(e.get("t", start)) >= start]


def progress_panel(run: RunDir, *, key: str = "progress") -> dict[str, Any]:
    """Render the live panel of `run`; returns the status as of this full rerun."""
    status = jobs.poll(run.path)
    was_active = status.get("state") in ACTIVE_STATES

    @st.fragment(run_every="1s" if was_active else None)
    def panel() -> None:
        now = jobs.poll(run.path)
        render_status(run, now, key=key)
        if was_active and now.get("state") not in ACTIVE_STATES:
            st.rerun()  # finished: a full rerun shows the results and re-declares this with run_every=None

    panel()
    return status


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_status(run: RunDir, status: dict[str, Any], *, key: str) -> None:
    state = status.get("state", "new")
    phase = status.get("phase") or "fit"
    icon = STATE_ICONS.get(state, ":material/circle:")
    resume_hint = " — Resume" if state in ("interrupted", "cancelled") else ""
    st.markdown(f"{icon} Run `{run.path.name}` — **{state}**{resume_hint}"
                + (" (fine-tuning)" if phase == "finetune" else ""))
    line = STATE_LINES.get(state) or status.get("message")
    if line:
        st.caption(line)
    events = run.read_events()
    plans = [e for e in events if e.get("kind") == "plan" and e.get("message")]
    sizes = [e for e in events if e.get("kind") == "size" and e.get("message")]
    if sizes:  # "auto" became a number: say which, and why
        st.caption(f":material/photo_size_select_large: {_sentence(str(sizes[-1]['message']))}")
    if plans:  # the epochs a budget or a time limit chose differ from the form's: say so
        st.caption(f":material/timer: {_sentence(str(plans[-1]['message']))}")
    rows = stage_rows(status, events)
    if state in ACTIVE_STATES and status.get("run_eta_s") is not None:
        st.markdown(f"**About {format_seconds(status['run_eta_s'])} left** for the whole run")
    if state in ACTIVE_STATES or state in RESUMABLE_STATES:
        for row in rows:
            st.progress(row.fraction, text=row.text)
    else:  # finished: the stages fold away, the curves and results matter now
        skipped = sum(r.state == "skipped" for r in rows)
        with st.expander(f"{sum(r.finished for r in rows)} of {len(rows)} stages done"
                         + (f" ({skipped} skipped: nothing to do)" if skipped else "")):
            for row in rows:
                st.progress(row.fraction, text=row.text)
    if any(e.get("kind") == "epoch" for e in events):
        st.plotly_chart(charts.loss_curves_figure(events), key=f"{key}_curves")
        if negative_loss(events):
            st.caption("ELR's loss goes below zero, and that is expected: it adds to the cross-entropy a "
                       "regulariser, λ·log(1 − ⟨p, t⟩), that is negative by construction. Lower is still better.")
    if state in ACTIVE_STATES:
        if st.button("Stop", key=f"{key}_stop", icon=":material/stop:", help="Saves a checkpoint; Resume continues"):
            with st.spinner("Stopping…"):
                jobs.stop(run.path)
            st.rerun()
    elif state in RESUMABLE_STATES:
        if state == "failed":
            st.error(f"The run failed: {status.get('error') or 'see the log below'}")
            tail = jobs.log_tail(run.path)
            if tail:
                st.code(tail, language="text")
        if st.button("Resume", key=f"{key}_resume", icon=":material/play_arrow:",
                     help="Continue from the last finished epoch"):
            try:
                jobs.resume(run.path)
            except jobs.JobError as e:
                st.error(str(e))
            else:
                st.rerun()


def negative_loss(events: list[dict[str, Any]]) -> bool:
    """Whether a classifier epoch reported a loss below zero (only ELR's can be)."""
    return any(e.get("kind") == "epoch" and e.get("stage") in ELR_STAGES and (e.get("loss") or 0) < 0
               for e in events)


def log_expander(run_dir: Path) -> None:
    tail = jobs.log_tail(run_dir, lines=200)
    if tail:
        with st.expander("Worker log"):
            st.code(tail, language="text")
