"""Why a card was flagged: one line of evidence, and its nearest images on demand.

The line: the image's loss as a percentile of its given class (from samples.csv), the mixture's clean
probability, and what its 5 nearest images in the feature space are labelled (RUN/neighbours.npy, which
the worker computes: the app never touches the features). The nearest images' thumbnails are drawn only
while their popover is open. An image whose copies carry other labels (samples.csv `duplicate_conflict`)
shows its group's members side by side with their labels on the card itself: that is the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine.review.findings import NO_GROUP, evidence_of
from ui import review
from ui.thumbs import thumbnail

NEIGHBOUR_PX = 72


@dataclass(frozen=True)
class Evidence:
    """What every card's evidence reads from, once per page."""

    neighbours: np.ndarray | None  # (N, 5) rows of samples.csv, or None (a run from before they were written)
    given: np.ndarray  # (N,) the given label of every samples.csv row
    paths: np.ndarray  # (N,) and its path
    image_root: Path | None
    group: np.ndarray  # (N,) duplicate_group of every row, NO_GROUP for none

    @classmethod
    def of(cls, samples: pd.DataFrame, neighbours: np.ndarray | None, image_root: Path | None) -> Evidence:
        return cls(neighbours, samples["given_label"].to_numpy(dtype=object), samples["path"].to_numpy(dtype=object),
                   image_root, evidence_of(samples)["duplicate_group"].to_numpy())


def _position(row: pd.Series) -> int:
    """The row's place in samples.csv: the queue keeps the index the file was read with."""
    return int(row.name)  # type: ignore[arg-type]


def evidence_line(row: pd.Series, evidence: Evidence) -> str:
    return "Why: " + review.why_flagged(row, review.neighbour_summary(_position(row), evidence.neighbours,
                                                                       evidence.given))


def nearest_popover(row: pd.Series, evidence: Evidence) -> None:
    """A "Nearest images" popover with their thumbnails and given labels, drawn only while it is open."""
    if evidence.neighbours is None:
        return
    rows = [int(r) for r in evidence.neighbours[_position(row)] if 0 <= r < len(evidence.paths)]
    if not rows:
        return
    box = st.popover("Nearest images", icon=":material/grid_view:", type="tertiary", key=f"nb_{int(row['index'])}",
                     on_change="rerun", help="The images most similar to this one in the model's feature space")
    with box:
        if not box.open:
            return
        if evidence.image_root is None:
            st.caption(" · ".join(f"{Path(str(evidence.paths[r])).name}: {evidence.given[r]}" for r in rows))
            return
        st.image([thumbnail(str(evidence.image_root / str(evidence.paths[r])), NEIGHBOUR_PX) for r in rows],
                 caption=[str(evidence.given[r]) for r in rows], width=NEIGHBOUR_PX)


def copies_strip(row: pd.Series, evidence: Evidence) -> None:
    """The other members of a conflicting duplicate group, side by side with their given labels."""
    position = _position(row)
    if not int(row.get("duplicate_conflict", 0) or 0) or evidence.group[position] == NO_GROUP:
        return
    members = [int(r) for r in np.flatnonzero(evidence.group == evidence.group[position]) if r != position]
    if not members:
        return
    captions = [f"{evidence.given[r]} · {review.short_name(Path(str(evidence.paths[r])).name, 14)}" for r in members]
    st.caption(f"Copies of this image ({len(members)}), with their labels:")
    if evidence.image_root is None:
        st.caption(" · ".join(captions))
        return
    st.image([thumbnail(str(evidence.image_root / str(evidence.paths[r])), NEIGHBOUR_PX) for r in members],
             caption=captions, width=NEIGHBOUR_PX)
