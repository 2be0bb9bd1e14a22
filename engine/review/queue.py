"""The review queue: which images to look at, in which order, and the flag budget. One definition, used by
the Review page (ui.review) and by the export (`export --top N`, engine.review.export).

Order (`ordered`): the images nobody decided yet, most suspicious first (ties by path); then the skipped
ones ("unsure": shown again at the end, in the same order); reviewed images (kept, relabeled, discarded)
only when asked for. The suspicion is the run's (samples.csv), or the re-ranked one (RUN/rerank.csv,
engine.method.rerank) where that file was made for the current samples.csv (`current_rerank`).

Budget (`in_budget`): "the N most suspicious flagged images". The flagged images someone already
answered (skips included: they were looked at and still need an answer) count first, then the most
suspicious of the others fill the budget. Reviewing an image inside the budget therefore never pulls a
new one in, and the app shows, and the export leaves flagged, exactly the same images.

Torch-free (pandas and NumPy); reads RUN/rerank.csv and RUN/rerank.json, writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import UserError
from engine.review.decisions import SKIP, DecisionStore
from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir

ACTION = "decision_action"  # the column holding each image's decision ("" or missing: none)
# Columns a re-ranking replaces in the queue: the suggestion, its top-3 and the order.
RERANKED = ("suggested_label", "suggested_prob", "given_prob", "suspicion", "top1_label", "top1_prob", "top2_label",
            "top2_prob", "top3_label", "top3_prob")
_UNDECIDED, _SKIPPED, _REVIEWED = 0, 1, 2


def samples_digest(data: bytes) -> str:
    """What ties a re-ranking to the samples.csv it was made from: the sha256 of that file's bytes."""
    return hashlib.sha256(data).hexdigest()


def _actions(table: pd.DataFrame) -> np.ndarray:
    if ACTION not in table:
        return np.full(len(table), "", dtype=object)
    return table[ACTION].fillna("").astype(str).to_numpy(dtype=object)


def _suspicion(table: pd.DataFrame) -> np.ndarray:
    if "suspicion" in table:
        return table["suspicion"].to_numpy(dtype=float)
    return 1.0 - table["clean_prob"].to_numpy(dtype=float)  # older runs: the mixture's doubt alone


def groups(table: pd.DataFrame, as_undecided: Collection[str] = ()) -> np.ndarray:
    """Each row's place in the order: 0 not decided (or in `as_undecided`), 1 skipped, 2 reviewed."""
    actions = _actions(table)
    group = np.where(actions == "", _UNDECIDED, np.where(actions == SKIP, _SKIPPED, _REVIEWED))
    if as_undecided:
        group[table["path"].isin(set(as_undecided)).to_numpy()] = _UNDECIDED
    return group


def ordered(table: pd.DataFrame, *, include_reviewed: bool = False,
            as_undecided: Collection[str] = ()) -> pd.DataFrame:
    """`table` (columns path, suspicion or clean_prob, and decision_action) in review order.

    Args:
        include_reviewed: keep the kept, relabeled and discarded images (after the skipped ones).
        as_undecided: paths placed and kept as if nobody had decided them: the cards a reviewer just
            decided stay where they were (and in view) until the page is opened afresh.
    """
    group = groups(table, as_undecided)
    keep = group < _REVIEWED if not include_reviewed else np.ones(len(table), dtype=bool)
    order = np.lexsort((table["path"].to_numpy(dtype=object).astype(str), -_suspicion(table), group))
    order = order[keep[order]]
    return table.iloc[order]


def in_budget(table: pd.DataFrame, top: int | None) -> np.ndarray:
    """(len(table),) bool: the flagged images inside a budget of the `top` most suspicious (None: every
    flagged image). Answered flagged images count first (see the module docstring)."""
    flagged = table["flagged"].to_numpy(dtype=bool)
    if top is None:
        return flagged
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    answered = flagged & (_actions(table) != "")
    room = max(0, top - int(answered.sum()))
    rest = np.flatnonzero(flagged & ~answered)
    order = np.lexsort((table["path"].to_numpy(dtype=object)[rest].astype(str), -_suspicion(table)[rest]))
    out = answered.copy()
    out[rest[order[:room]]] = True
    return out


# ----------------------------------------------------------------------------- a re-ranking on disk


def current_rerank(run_dir: Path, digest: str, paths: pd.Series) -> pd.DataFrame | None:
    """RUN/rerank.csv when it was made from the samples.csv whose sha256 is `digest` and lists exactly
    `paths` in that order; None otherwise (none yet, or one from an earlier fit or phase)."""
    run = RunDir(run_dir)
    meta = read_json(run.rerank_meta, default=None)
    if not isinstance(meta, dict) or meta.get("samples_sha256") != digest:
        return None
    try:
        rerank = pd.read_csv(run.rerank, dtype={"path": str, "suggested_label": str, "top1_label": str,
                                                "top2_label": str, "top3_label": str, "decision_action": str,
                                                "decision_label": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if len(rerank) != len(paths) or not (rerank["path"].to_numpy() == paths.to_numpy()).all():
        return None
    return rerank


def with_rerank(samples: pd.DataFrame, rerank: pd.DataFrame | None) -> pd.DataFrame:
    """samples with the re-ranked suggestion, top-3 and suspicion in place of the fit's (rows aligned)."""
    if rerank is None:
        return samples
    out = samples.copy()
    for column in RERANKED:
        if column in rerank:
            out[column] = rerank[column].to_numpy()
    return out


def decisions_since(rerank: pd.DataFrame | None, decisions: dict) -> int:
    """How many images have another trusted decision (keep, relabel, discard) than the re-ranking was made
    with: the decisions made (or undone) since; every trusted decision when there is no re-ranking yet."""
    if rerank is None:
        return sum(d.action != SKIP for d in decisions.values())
    used = dict(zip(rerank["path"], zip(rerank["decision_action"], rerank["decision_label"], strict=True),
                    strict=True))
    now = {p: (d.action, d.label or "") for p, d in decisions.items() if d.action != SKIP}
    changed = sum(used.get(p, ("", "")) != value for p, value in now.items())
    gone = sum(1 for p, (action, _) in used.items() if action and p not in now)
    return changed + gone


def flag_budget(run_dir: Path, samples: pd.DataFrame, flagged: pd.Series, top: int | None) -> pd.Series:
    """The export's `flagged` under `--top N`: only the flagged images inside the budget stay flagged
    (decisions, skips included, from the run's store; the re-ranked order where it is current)."""
    if top is None:
        return flagged
    run = RunDir(run_dir)
    decisions = DecisionStore(run.decisions).all() if run.decisions.exists() else {}
    rerank = current_rerank(run.path, samples_digest(run.samples.read_bytes()), samples["path"])
    table = with_rerank(samples, rerank).assign(flagged=flagged.to_numpy(),
                                                **{ACTION: samples["path"].map(lambda p: decisions[p].action
                                                                               if p in decisions else "")})
    return pd.Series(in_budget(table, top), index=flagged.index)
