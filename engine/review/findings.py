"""The near-duplicate and outlier columns of samples.csv as readers see them (engine.method.evidence
writes them): read tolerantly, counted for Inspect, grouped for the Review cards.

A run written before these columns existed (or a damaged cell) reads as no group (-1), no conflict (0)
and no score (NaN). pandas only: the app imports this module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EVIDENCE_COLUMNS = ("duplicate_group", "duplicate_conflict", "outlier_score")
NO_GROUP = -1
OUTLIER_VIEW = 0.99  # the Review page's "maybe discard" view and Inspect's count: the most outlying 1 %


def evidence_of(s: pd.DataFrame) -> dict[str, pd.Series]:
    """The EVIDENCE_COLUMNS of samples.csv rows, with the defaults above where missing or unreadable."""
    def column(name: str, missing: float) -> pd.Series:
        if name not in s:
            return pd.Series(missing, index=s.index, dtype=float)
        return pd.to_numeric(s[name], errors="coerce").fillna(missing)
    return {"duplicate_group": column("duplicate_group", NO_GROUP).astype(int),
            "duplicate_conflict": column("duplicate_conflict", 0).astype(int),
            "outlier_score": column("outlier_score", float("nan"))}


def finding_counts(s: pd.DataFrame) -> dict[str, int]:
    """How many of each kind of finding: duplicate groups, those whose labels disagree, and outliers at
    OUTLIER_VIEW or more."""
    e = evidence_of(s)
    group, conflict = e["duplicate_group"], e["duplicate_conflict"]
    return {"duplicate_groups": int(group[group != NO_GROUP].nunique()),
            "conflicting_groups": int(group[(group != NO_GROUP) & (conflict > 0)].nunique()),
            "outliers": int((e["outlier_score"] >= OUTLIER_VIEW).sum())}


def group_members(s: pd.DataFrame, position: int) -> np.ndarray:
    """Row positions of the other members of row `position`'s duplicate group (empty: no group)."""
    group = evidence_of(s)["duplicate_group"].to_numpy()
    if group[position] == NO_GROUP:
        return np.zeros(0, np.int64)
    members = np.flatnonzero(group == group[position])
    return members[members != position]
