"""How right are the labels, before and after the export? Measured against a truth file when the run
knows one, else the run's own estimate — said as such wherever it is shown.

The estimate: the given labels are right except for the share the mixture flags (the per-class noise
estimate, summed); a human relabel or discard is taken as fixing a wrong label, a keep as changing
nothing; an automatic change counts (2p - 1) with p the precision its bar was set to reach on the
benchmark cases (`BAR_PRECISION`), since a wrong change both loses a right label and keeps a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from engine.config import RelabelConfig

BAR_PRECISION = 0.95  # engine.method.relabel: the precision the confident bar is set to reach


@dataclass(frozen=True)
class LabelAccuracy:
    given: float  # share of the given labels that are right
    exported: float  # share of the exported labels (discarded images left out) that are right
    measured: bool  # True: against the truth file; False: the run's own estimate
    changed: int  # exported labels that differ from the given ones
    auto_changed: int  # of which without a human decision


def label_accuracy(samples: pd.DataFrame, table: pd.DataFrame) -> LabelAccuracy:
    """`samples`: RUN/samples.csv; `table`: engine.review.export.corrected_labels of the same run."""
    kept = table["status"] != "discarded"
    changed = kept & (table["label"] != table["original_label"])
    auto = table["status"] == "auto-relabeled"
    if "true_label" in samples and samples["true_label"].astype(str).str.len().gt(0).any():
        true = samples["true_label"].astype(str).to_numpy()
        given = float((table["original_label"].to_numpy() == true).mean())
        exported = float((table["label"][kept].to_numpy() == true[kept.to_numpy()]).mean()) if kept.any() else given
        return LabelAccuracy(given, exported, True, int(changed.sum()), int(auto.sum()))
    n = max(len(table), 1)
    flagged = samples["flagged"].astype(int).sum() if "flagged" in samples else 0
    given = 1.0 - flagged / n
    human_fix = int(((table["status"] == "relabeled") | (table["status"] == "discarded")).sum())
    exported = min(1.0, given + (human_fix + auto.sum() * (2 * BAR_PRECISION - 1)) / n)
    return LabelAccuracy(float(given), float(exported), False, int(changed.sum()), int(auto.sum()))


def accuracy_line(acc: LabelAccuracy) -> str:
    """One sentence for the Inspect and Export pages."""
    how = "against the truth file" if acc.measured else "the run's own estimate, no truth file"
    return (f"Labels right: given {acc.given:.1%} → exported {acc.exported:.1%} ({how}); "
            f"{acc.changed:,} labels change, {acc.auto_changed:,} of them automatically.")


# Why a weak model's count is rough: its losses cannot tell hard images from wrong labels, so the mixture's
# share of "noisy" images is not a measurement of the noise (bench/flag_count.py: clean CIFAR-10 images got
# 16 % flagged, and 5,000 with 42 % wrong labels got 20 %). The bar is the relabel bar's competence: below
# it no label changes by itself either.
ROUGH_COUNT = ("With a model this unsure, hard images and wrong labels look alike to it: the number flagged and "
               "the per-class noise rates are rough (too many on clean data, too few under heavy noise). Read "
               "the flags as a review order, most suspicious first.")


def competence_bar(split: dict) -> float:
    """The relabel bar's competence a run was scored against (split.json; older runs: today's default)."""
    return float(split.get("min_competence", RelabelConfig().min_competence))


def count_is_rough(split: dict) -> bool:
    """True when split.json's held-out competence is below the relabel bar's (`relabel.min_competence`)."""
    competence = split.get("competence")
    return competence is not None and competence < competence_bar(split)
