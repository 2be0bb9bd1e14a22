"""Review decisions as training labels: the one rule every stage that trains or splits applies.

A person's answer outranks every model in the run:

* `keep`    — the image trains, and counts as clean, with the run's *given* label (whatever label the
  decision stored: a decision remembered from a run where the file had another label still means "this
  run's label is right");
* `relabel` — it trains, and counts as clean, with the decided label;
* `discard` — it is left out of training and out of the mixture;
* `skip`    — "unsure": no decision at all (load_decisions already leaves it out; it is ignored here too).

Phase (a) (the classifier stage and the mixture, for decisions a run starts with: remembered or
imported), the re-rank head and phase (b) (SupCon weights, the new head, the refreshed mixture) all take
their labels from `trusted_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import UserError
from engine.review.decisions import SKIP, Decision


@dataclass(frozen=True)
class TrustedLabels:
    labels: np.ndarray  # (N,) int64: the decided label where reviewed (keep: the given one), else the given
    decided: np.ndarray  # (N,) bool: kept or relabeled — trusted as clean
    discarded: np.ndarray  # (N,) bool: left out of training and of the mixture
    action: np.ndarray  # (N,) object: the decision's action ("" where none)
    label: np.ndarray  # (N,) object: the decision's stored label ("" where none)

    @property
    def trains(self) -> np.ndarray:
        """(N,) bool: the images that train (every image not discarded)."""
        return ~self.discarded

    @property
    def undecided(self) -> np.ndarray:
        """(N,) bool: the images the mixture is fitted on (neither decided nor discarded)."""
        return ~(self.decided | self.discarded)


def trusted_labels(paths: Sequence[str], given: np.ndarray, classes: Sequence[str],
                   decisions: Mapping[str, Decision]) -> TrustedLabels:
    """Training labels from the given labels and the decisions (keyed by samples.csv path).

    Raises UserError (before anything trains) when a decision names a label that is not a class of the run.
    """
    index = {c: i for i, c in enumerate(classes)}
    n = len(paths)
    labels = np.asarray(given, dtype=np.int64).copy()
    decided = np.zeros(n, bool)
    discarded = np.zeros(n, bool)
    action = np.full(n, "", dtype=object)
    label = np.full(n, "", dtype=object)
    for i, path in enumerate(paths):
        d = decisions.get(path)
        if d is None or d.action == SKIP:
            continue
        action[i], label[i] = d.action, d.label or ""
        if d.action == "discard":
            discarded[i] = True
        elif d.action == "keep":
            decided[i] = True
        elif d.label in index:
            labels[i], decided[i] = index[d.label], True
        else:
            raise UserError(f"review decision for {path} uses label {d.label!r}, which is not a class of this run")
    return TrustedLabels(labels, decided, discarded, action, label)


def no_decisions(given: np.ndarray) -> TrustedLabels:
    """The trusted labels of a run nobody has reviewed: the given labels, every image training."""
    n = len(given)
    return TrustedLabels(np.asarray(given, dtype=np.int64).copy(), np.zeros(n, bool), np.zeros(n, bool),
                         np.full(n, "", dtype=object), np.full(n, "", dtype=object))
