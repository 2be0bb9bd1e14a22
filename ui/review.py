"""The review queue and the review actions, as plain functions of DataFrames and the decision store.

The Review page is a thin shell around this module: it filters the queue here (the order and the flag
budget are engine.review.queue's, shared with the export) and sends every click and keyboard shortcut
through `apply_action`, so "Keep" and "Accept" share one code path and one test. It also words each
card's evidence (`why_flagged`). No Streamlit in this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from engine.review import queue as review_order
from engine.review.decisions import SKIP, DecisionStore, Restore
from engine.review.findings import NO_GROUP, OUTLIER_VIEW
from engine.runs.atomic import atomic_write_json, now_iso, read_json
from engine.runs.rundir import RunDir

ReviewAction = Literal["keep", "accept", "relabel", "discard", "skip"]
Scope = Literal["flagged", "selection", "all", "outliers"]
NOT_REVIEWED = "not reviewed"
SKIPPED = "skipped"
STATUS_OF_ACTION = {"keep": "kept", "relabel": "relabeled", "discard": "discarded", SKIP: SKIPPED}
STATUSES: tuple[str, ...] = (NOT_REVIEWED, "kept", "relabeled", "discarded", SKIPPED)
REVIEWED_STATUSES = frozenset({"kept", "relabeled", "discarded"})  # answered: out of the queue unless shown


def with_decisions(samples: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """samples + `status` (not reviewed / kept / relabeled / discarded / skipped), `decision_label` and
    `decision_action` (the store's action, "" when none), by path."""
    action = decisions.set_index("path")["action"] if len(decisions) else pd.Series(dtype=object)
    label = decisions.set_index("path")["label"] if len(decisions) else pd.Series(dtype=object)
    out = samples.copy()
    actions = out["path"].map(action)
    out["status"] = actions.map(STATUS_OF_ACTION).fillna(NOT_REVIEWED)
    out["decision_label"] = out["path"].map(label)
    out[review_order.ACTION] = actions.astype(object).where(actions.notna(), "")
    return out


def review_queue(
    table: pd.DataFrame,
    *,
    scope: Scope = "flagged",
    selection: Iterable[str] | None = None,
    given: Sequence[str] = (),
    suggested: Sequence[str] = (),
    statuses: Sequence[str] = (),
    include_reviewed: bool = False,
    top: int | None = None,
    pinned: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The images to review in review order (engine.review.queue.ordered): not yet answered, most
    suspicious first, then the skipped ones; reviewed images only with `include_reviewed` (or a status
    filter that names a reviewed status).

    Args:
        table: `with_decisions(samples, decisions)`.
        scope: "flagged" (flagged == 1), "selection" (the paths in `selection`), "all", or "outliers" (the
            "maybe discard" view: outlier_score >= OUTLIER_VIEW, most outlying first).
        given, suggested, statuses: keep only these values (empty = no filter).
        top: the flag budget of the "flagged" scope: only the `top` most suspicious flagged images.
        pinned: path -> the suspicion it was shown with: cards decided in this tab, kept in view and in place.
    """
    mask = np.ones(len(table), dtype=bool)
    if scope == "flagged":
        mask &= review_order.in_budget(table, top)
    elif scope == "selection":
        mask &= table["path"].isin(set(selection or ())).to_numpy()
    elif scope == "outliers":
        mask &= (table["outlier_score"] >= OUTLIER_VIEW).to_numpy() if "outlier_score" in table else False
    if given:
        mask &= table["given_label"].isin(given).to_numpy()
    if suggested:
        mask &= table["suggested_label"].isin(suggested).to_numpy()
    if statuses:
        mask &= table["status"].isin(statuses).to_numpy()
        include_reviewed = include_reviewed or bool(REVIEWED_STATUSES & set(statuses))
    chosen = table[mask]
    if scope == "outliers":  # ordered by how far out, not by label suspicion: the queue's order sorts on this
        chosen = chosen.assign(suspicion=chosen["outlier_score"])
    if pinned:
        chosen = chosen.copy()
        held = chosen["path"].map(pinned)
        if "suspicion" in chosen:  # a pinned card keeps the place it was decided at, whatever the new order says
            chosen["suspicion"] = held.fillna(chosen["suspicion"])
    ordered = review_order.ordered(chosen, include_reviewed=include_reviewed, as_undecided=tuple(pinned or ()))
    return table.loc[ordered.index]


def progress_counts(table: pd.DataFrame) -> tuple[int, int]:
    """(flagged images with a decision, flagged images); a skip is no decision."""
    flagged = table["flagged"].to_numpy(dtype=bool)
    reviewed = table["status"].isin(REVIEWED_STATUSES).to_numpy() & flagged
    return int(reviewed.sum()), int(flagged.sum())


def class_counts(table: pd.DataFrame, budget: np.ndarray | None = None) -> pd.DataFrame:
    """Per given class: flagged, reviewed, skipped and left (flagged, not answered), plus `left in budget`
    when a flag budget (`budget`: engine.review.queue.in_budget's mask) is set."""
    flagged = table["flagged"].to_numpy(dtype=bool)
    status = table["status"].to_numpy()
    frame = pd.DataFrame({
        "class": table["given_label"].to_numpy(),
        "flagged": flagged,
        "reviewed": flagged & np.isin(status, list(REVIEWED_STATUSES)),
        "skipped": flagged & (status == SKIPPED),
        "left": flagged & (status == NOT_REVIEWED),
    })
    if budget is not None:
        frame["left in budget"] = frame["left"].to_numpy() & budget
    out = frame.groupby("class", sort=True).sum().astype(int).reset_index()
    return out[out["flagged"] > 0].reset_index(drop=True)


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
    discard -> ("discard", None); skip -> ("skip", None), "unsure": recorded, never trusted. Rows with
    different labels become one write per label.
    """
    if action in ("discard", SKIP):
        return [Write(tuple(rows["path"]), action, None)] if len(rows) else []
    if action == "keep":
        target = rows["given_label"]
    elif action == "accept":
        target = rows["suggested_label"]
    elif action == "relabel":
        if not label:
            raise ValueError("relabel needs a class to relabel to")
        target = pd.Series(label, index=rows.index)
    else:
        raise ValueError(f"unknown review action {action!r}; use keep, accept, relabel, discard or skip")
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
            "relabel": f"relabeled to {label!r}", "discard": "discarded",
            "skip": "skipped (unsure, shown again at the end)"}[action]
    noun = "image" if n == 1 else "images"
    return f"{what} {n} {noun}" if action != "relabel" else f"{what}: {n} {noun}"


# ----------------------------------------------------------------------------- why an image is flagged


def loss_percentiles(samples: pd.DataFrame) -> pd.Series:
    """Each image's loss as a percentile (0-100) of the losses of its given class: 97 = at least as high as
    97 % of them (itself included). NaN where the run has no loss column."""
    if "loss" not in samples:
        return pd.Series(np.nan, index=samples.index)
    return samples.groupby("given_label")["loss"].rank(method="max", pct=True) * 100


def neighbour_summary(position: int, neighbours: np.ndarray | None, given: np.ndarray) -> tuple[str, int, int] | None:
    """(the most common given label among the image's nearest images, how many have it, how many there
    are), or None without neighbours. `position`: the image's row in samples.csv."""
    if neighbours is None or not 0 <= position < len(neighbours):
        return None
    rows = [int(r) for r in neighbours[position] if 0 <= r < len(given)]
    if not rows:
        return None
    label, count = Counter(str(given[r]) for r in rows).most_common(1)[0]
    return label, count, len(rows)


def why_flagged(row: pd.Series, summary: tuple[str, int, int] | None) -> str:
    """One line of evidence: the loss percentile within the given class, the clean probability, and
    what the nearest images are labelled ("4 of 5 nearest images are labelled dog")."""
    parts = []
    pct = row.get("loss_pct")
    if pct is not None and not pd.isna(pct):
        parts.append(f"loss ≥ {int(float(pct))} % of images labelled {row['given_label']}")
    parts.append(f"clean prob {float(row['clean_prob']):.2f}")
    if summary is not None:
        label, count, n = summary
        parts.append(f"{count} of {n} nearest images {'is' if count == 1 else 'are'} labelled {label}")
    if int(row.get("duplicate_conflict", 0) or 0):
        parts.append("a copy of it carries another label")
    elif int(row.get("duplicate_group", NO_GROUP)) != NO_GROUP:
        parts.append("it has a copy with the same label")
    score = row.get("outlier_score")
    if score is not None and not pd.isna(score) and float(score) >= OUTLIER_VIEW:
        parts.append(f"farther from the other images than {float(score):.1%} of them: maybe not of any class")
    return " · ".join(parts)


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
