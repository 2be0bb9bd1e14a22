"""Does the export help? Scores of the labels each method hands the user, against the truth.

The detection metrics (precision, recall, F1, AUROC) say whether the flags find the wrong labels; these
say what a user who takes the export gets: are more labels right than before, how many were changed
without anyone looking, and how many of those changes are right. An export must never make labels
worse, and on clean data every change is a change for the worse.

CLeaN rows are scored from the files a user gets: RUN/samples.csv (the flags) and the CSV written by
`python -m engine export RUN --out F --format csv` (the labels). cleanlab and kNN rows are scored from
the label a user accepting every suggestion would get.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXPORT_STATUS_DECIDED = ("kept", "relabeled", "discarded")  # engine.review.export: a person decided these


def label_scores(*, given: np.ndarray, true: np.ndarray, exported: np.ndarray, flagged: np.ndarray,
                 decided: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of exported labels (class names; None or "" = discarded) against the true labels.

    Images without a true label (None) are left out. Per-class noise estimate error: for each class of
    the given labels, |share of its images flagged - share of its images truly wrong|, in points; the
    max and the mean over classes. Auto-changed: exported label != given label where no person decided;
    their precision is the share of them whose exported label is the true one (None when none changed).
    """
    known = np.array([t is not None for t in true], dtype=bool)
    g, t, e = given[known], true[known], exported[known]
    f = np.asarray(flagged, dtype=bool)[known]
    d = np.zeros(len(g), bool) if decided is None else np.asarray(decided, dtype=bool)[known]
    n = len(g)
    wrong = g != t
    given_right = float((~wrong).mean()) if n else float("nan")
    exported_right = float((e == t).mean()) if n else float("nan")
    gaps = [abs(float(f[g == c].mean()) - float(wrong[g == c].mean())) for c in np.unique(g)]
    changed = (e != g) & ~d
    right = changed & (e == t)
    return {
        "n": int(n),
        "n_wrong": int(wrong.sum()),
        "n_flagged": int(f.sum()),
        "flag_ratio": round(float(f.sum()) / float(wrong.sum()), 4) if wrong.any() else None,
        "given_right": round(given_right, 4),
        "exported_right": round(exported_right, 4),
        "gain_points": round(100 * (exported_right - given_right), 2),
        "class_error_max": round(100 * max(gaps), 2) if gaps else None,
        "class_error_mean": round(100 * float(np.mean(gaps)), 2) if gaps else None,
        "auto_changed": int(changed.sum()),
        "auto_changed_right": int(right.sum()),
        "auto_precision": round(float(right.sum()) / float(changed.sum()), 4) if changed.any() else None,
    }


def scores_of_arrays(classes: tuple[str, ...], labels: np.ndarray, truth: np.ndarray, flagged: np.ndarray,
                     corrected: np.ndarray) -> dict[str, Any]:
    """label_scores of a baseline: index labels into `classes`, truth as class names."""
    names = np.array(classes, dtype=object)
    return label_scores(given=names[labels], true=truth, exported=names[corrected], flagged=flagged)


# ================================================================================================ CLeaN runs


def export_command(run: Path, out: Path) -> list[str]:
    return ["export", str(run), "--out", str(out), "--format", "csv"]


def phase_a_view(run: Path, view: Path) -> Path:
    """A run folder holding phase (a)'s samples as they were before fine-tuning rewrote samples.csv: what
    `engine export` would have read had the user exported after `fit` without --finetune. The export reads
    samples.csv, source.json (classes) and decisions.sqlite (none in a benchmark run)."""
    from engine.runs import owner
    from engine.runs.rundir import RunDir

    shutil.rmtree(view, ignore_errors=True)
    owner.claim(RunDir(view))  # the view is a run folder of CLeaN's own making
    shutil.copy2(run / "samples_phase_a.csv", view / "samples.csv")
    shutil.copy2(run / "source.json", view / "source.json")
    return view


def score_export(samples: Path, export: Path, truth: Path) -> dict[str, Any]:
    """label_scores of one CLeaN export: flags and given labels from samples.csv, exported labels and who
    decided them from the export CSV, true labels from the case's truth file (paths relative to the data)."""
    from engine.review.metrics import load_truth

    s = pd.read_csv(samples, dtype={"path": str, "given_label": str}, keep_default_na=False)
    x = pd.read_csv(export, dtype={"path": str, "label": str, "status": str}, keep_default_na=False)
    x = x.set_index("path").reindex(s["path"])
    if x["label"].isna().any():
        missing = s["path"][x["label"].isna().to_numpy()].tolist()
        raise ValueError(f"{export} lacks {len(missing)} image(s) of {samples}, e.g. {missing[0]}")
    true = load_truth(truth, s["path"].tolist())
    exported = x["label"].to_numpy(dtype=object)
    return label_scores(given=s["given_label"].to_numpy(dtype=object), true=true, exported=exported,
                        flagged=s["flagged"].astype(int).to_numpy().astype(bool),
                        decided=x["status"].isin(EXPORT_STATUS_DECIDED).to_numpy())
