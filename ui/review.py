"""The review queue and the review actions, as plain functions of DataFrames and the decision store.

The Review page is a thin shell around this module: it filters, orders and pages the queue here and
sends every click and keyboard shortcut through `apply_action`, so "Keep" and "Accept" share one code
path and one test. No Streamlit in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from engine.review.decisions import DecisionStore, Restore
from engine.runs.atomic import atomic_write_json, now_iso, read_json
from engine.runs.rundir import RunDir

ReviewAction = Literal["keep", "accept", "relabel", "discard"]
Scope = Literal["flagged", "selection", "all"]
NOT_REVIEWED = "not reviewed"
STATUS_OF_ACTION = {"keep": "kept", "relabel": "relabeled", "discard": "discarded"}
STATUSES: tuple[str, ...] = (NOT_REVIEWED, "kept", "relabeled", "discarded")


def with_decisions(samples: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """samples + `status` (not reviewed / kept / relabeled / discarded) and `decision_label`, by path."""
    action = decisions.set_index("path")["action"] if len(decisions) else pd.Series(dtype=object)
    label = decisions.set_index("path")["label"] if len(decisions) else pd.Series(dtype=object)
    out = samples.copy()
    out["status"] = out["path"].map(action).map(STATUS_OF_ACTION).fillna(NOT_REVIEWED)
    out["decision_label"] = out["path"].map(label)
    return out


def review_queue(
    table: pd.DataFrame,
    *,
    scope: Scope = "flagged",
    selection: Iterable[str] | None = None,
    given: Sequence[str] = (),
    suggested: Sequence[str] = (),
    statuses: Sequence[str] = (),
) -> pd.DataFrame:
    """The images to review, most suspicious first.

    Args:
        table: `with_decisions(samples, decisions)`.
        scope: "flagged" (flagged == 1), "selection" (the paths in `selection`) or "all".
        given, suggested, statuses: keep only these values (empty = no filter).
    """
    mask = np.ones(len(table), dtype=bool)
    if scope == "flagged":
        mask &= table["flagged"].to_numpy(dtype=bool)
    elif scope == "selection":
        mask &= table["path"].isin(set(selection or ())).to_numpy()
    if given:
        mask &= table["given_label"].isin(given).to_numpy()
    if suggested:
        mask &= table["suggested_label"].isin(suggested).to_numpy()
    if statuses:
        mask &= table["status"].isin(statuses).to_numpy()
    sort_key = "suspicion" if "suspicion" in table else "clean_prob"
    ascending = sort_key == "clean_prob"
    return table[mask].sort_values([sort_key, "path"], ascending=[ascending, True], kind="stable")


def progress_counts(table: pd.DataFrame) -> tuple[int, int]:
    """(flagged images with a decision, flagged images)."""
    flagged = table["flagged"].to_numpy(dtype=bool)
    reviewed = (table["status"].to_numpy() != NOT_REVIEWED) & flagged
    return int(reviewed.sum()), int(flagged.sum())


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Write:
    """One store write: these paths get this action and label."""

    paths: tuple[str, ...]
    action: str  # store action: keep | relabel | discard
    label: str | None


def plan(rows: pd.DataFrame, action: ReviewAction, label: str | None = None) -> list[Write]:
    """Turn a review action on some rows into store writes.

    keep -> ("keep", given label); accept -> ("relabel", suggested label), or "keep" where the suggestion
    is the given label; relabel -> ("relabel", `label`), or "keep" where `label` is the given label;
    discard -> ("discard", None). Rows with different labels become one write per label.
    """
    if action == "discard":
        return [Write(tuple(rows["path"]), "discard", None)] if len(rows) else []
    if action == "keep":
        target = rows["given_label"]
    elif action == "accept":
        target = rows["suggested_label"]
    elif action == "relabel":
        if not label:
            raise ValueError("relabel needs a class to relabel to")
        target = pd.Series(label, index=rows.index)
    else:
        raise ValueError(f"unknown review action {action!r}; use keep, accept, relabel or discard")
    store_action = np.where(target.to_numpy() == rows["given_label"].to_numpy(), "keep", "relabel")
    groups = pd.DataFrame({"path": rows["path"].to_numpy(), "action": store_action, "label": target.to_numpy()})
    return [Write(tuple(part["path"]), act, lab) for (act, lab), part in groups.groupby(["action", "label"], sort=True)]


@dataclass(frozen=True)
class Replaced:
    """One image's decision before and after a review action (action None = no decision)."""

    path: str
    before_action: str | None
    before_label: str | None
    after_action: str
    after_label: str | None


@dataclass(frozen=True)
class UndoEntry:
    """What one review action replaced, and what it wrote in its place."""

    description: str
    changes: tuple[Replaced, ...]


@dataclass(frozen=True)
class UndoResult:
    restored: int  # images put back to their decision before the action
    skipped: int  # images left alone: another tab decided them after the action


def apply_action(
    store: DecisionStore, rows: pd.DataFrame, action: ReviewAction, *, label: str | None = None,
    source: str | None = None,
) -> UndoEntry | None:
    """Write a review action for `rows` to the store at once; return what it replaced (for undo)."""
    writes = plan(rows, action, label)
    if not writes:
        return None
    current = store.all()
    changes: list[Replaced] = []
    for w in writes:
        for p in w.paths:
            before = current.get(p)
            changes.append(Replaced(p, before.action if before else None, before.label if before else None,
                                    w.action, w.label))
        store.decide(w.paths, w.action, w.label, source=source)  # type: ignore[arg-type]
    return UndoEntry(describe(action, len(changes), label), tuple(changes))


def undo(store: DecisionStore, entry: UndoEntry, *, source: str | None = None) -> UndoResult:
    """Put back what `entry` replaced (a whole batch at once), but only where the action's value still stands.

    `DecisionStore.undo` reverts one logged row; a batch action writes many rows, and undoing twice
    must step further back rather than redo, so this restores the recorded previous values instead.
    Each tab keeps its own undo history, so an image another tab decided after this action is skipped
    (compare-and-set, in one store transaction): undoing here must never wipe a later decision made elsewhere.
    """
    restored = store.restore(
        [Restore(c.path, c.after_action, c.after_label, c.before_action, c.before_label) for c in entry.changes],
        source=source,
    )
    return UndoResult(restored=restored, skipped=len(entry.changes) - restored)


def undo_message(entry: UndoEntry, result: UndoResult) -> str:
    """The line shown after an undo, saying how many images another tab had changed in the meantime."""
    text = f"Undone: {entry.description}."
    if result.skipped:
        one = result.skipped == 1
        text += (f" {result.skipped} {'image was' if one else 'images were'} not put back: another tab changed "
                 f"{'it' if one else 'them'} since.")
    return text


def describe(action: ReviewAction, n: int, label: str | None = None) -> str:
    what = {"keep": "kept the given label of", "accept": "accepted the suggestion for",
            "relabel": f"relabeled to {label!r}", "discard": "discarded"}[action]
    noun = "image" if n == 1 else "images"
    return f"{what} {n} {noun}" if action != "relabel" else f"{what}: {n} {noun}"


def top3_text(row: pd.Series) -> str:
    """'dog 0.71 · cat 0.20 · fox 0.05' from the top-k columns (missing columns are skipped)."""
    parts = []
    for k in (1, 2, 3):
        label, prob = row.get(f"top{k}_label"), row.get(f"top{k}_prob")
        if isinstance(label, str) and label and prob is not None and not pd.isna(prob):
            parts.append(f"{label} {float(prob):.2f}")
    return " · ".join(parts)


def short_name(name: str, limit: int = 24) -> str:
    """`name` cut in the middle to `limit` characters, keeping its start and its end with the extension.

    A card is narrow: a long file name would wrap mid-word (often mid-extension); the end is where names
    differ (img_0001 vs img_0002), so it stays, and the cut is an ellipsis.
    """
    if len(name) <= limit:
        return name
    tail = max(limit // 2, min(len(name) - name.rfind("."), limit - 4) if "." in name else 0)
    head = limit - 1 - tail
    return f"{name[:head]}…{name[-tail:]}"


# ----------------------------------------------------------------------------- a selection sent from Inspect


@dataclass(frozen=True)
class Selection:
    paths: tuple[str, ...]
    label: str  # where it came from, e.g. "UMAP selection" or "given 3 → suggested 8"


def save_selection(run: RunDir, paths: Sequence[str], label: str) -> None:
    """Remember images picked on Inspect for the Review page (in the run folder: survives a refresh)."""
    atomic_write_json(run.review_selection, {"paths": list(paths), "label": label, "at": now_iso()})


def load_selection(run: RunDir) -> Selection | None:
    data = read_json(run.review_selection, default=None)
    if not isinstance(data, dict) or not data.get("paths"):
        return None
    return Selection(tuple(str(p) for p in data["paths"]), str(data.get("label") or "selection"))


def clear_selection(run: RunDir) -> None:
    run.review_selection.unlink(missing_ok=True)
