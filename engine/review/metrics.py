"""Detection metrics against a truth file (`path,true_label`), when one is known.

The truth formats accepted are the ones the project writes: `sample_data/truth.csv`
(`path,true_label,given_label`) and `engine noise`'s `noise.csv` (`path,true_label,noisy_label`).

scikit-learn computes the scores; it is imported inside `detection_metrics` only, so the app (which
reads TRUTH_NAMES from here) never loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import UserError
from engine.filekind import require_regular_file

TRUTH_NAMES = ("truth.csv", "noise.csv")  # found in the data folder by `fit` (and shown by the app) by themselves


def find_truth(data_root: Path) -> Path | None:
    """A truth file shipped inside the data folder (sample_data/truth.csv, OUT/noise.csv)."""
    for name in TRUTH_NAMES:
        p = Path(data_root) / name
        if p.is_file():
            return p
    return None


def load_truth(path: Path, paths: list[str] | tuple[str, ...], classes: tuple[str, ...] | None = None) -> np.ndarray:
    """True label of each image in `paths` (object array; None where the file has no row for it).

    Raises UserError when the file is not a regular file (a named pipe would block the read forever),
    lacks the columns or matches none of the images.
    """
    require_regular_file(Path(path), "truth file", "a CSV file with path,true_label columns")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"truth file {path} is empty: need path,true_label columns") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read truth file {path}: {e}") from e
    missing = {"path", "true_label"} - set(df.columns)
    if missing:
        raise UserError(f"truth file {path} lacks column(s) {', '.join(sorted(missing))}: need path,true_label")
    lookup = dict(zip(df["path"].str.replace("\\", "/", regex=False), df["true_label"], strict=True))
    out = np.array([lookup.get(p) for p in paths], dtype=object)
    if all(v is None for v in out):
        raise UserError(f"truth file {path} names none of the {len(paths)} images (paths must be relative to the data folder)")
    if classes is not None and not any(v in classes for v in out if v is not None):
        # A truth file of another dataset (e.g. found beside a CSV manifest) would score every image wrong.
        raise UserError(f"truth file {path}: none of its true labels is a class of this dataset "
                        f"({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''})")
    return out


def detection_metrics(
    *,
    given: np.ndarray,
    true: np.ndarray,
    flagged: np.ndarray,
    clean_prob: np.ndarray,
    predicted: np.ndarray,
    corrected: np.ndarray,
    reviewed: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Precision/recall/F1/AUROC of the flags against truly mislabeled images, and label accuracies.

    All label arrays hold class names; images without a truth row (true is None) are left out.
    `corrected` is the exported label (None for discarded images, which are left out of its accuracy).
    `reviewed`: (N,) bool, images a person decided. The detection scores are the model's, on the images
    nobody decided (a decided image is trusted, so never flagged: counting it would score the person's
    work as the model's misses); the label accuracies are over every image.
    """
    known = np.array([t is not None for t in true], dtype=bool)
    by_model = known if reviewed is None else known & ~np.asarray(reviewed, bool)
    g, t = given[known], true[known]
    wrong = np.asarray(g != t, dtype=bool)
    m = _detection(given[by_model], true[by_model], flagged[by_model].astype(bool), clean_prob[by_model])
    c = corrected[known]
    kept = np.array([v is not None and v == v for v in c])  # None/NaN = discarded
    changed = kept & (c != g)  # exported labels that differ from the given ones
    return {
        "n": int(known.sum()),
        "n_mislabeled": int(wrong.sum()),
        "n_reviewed": int((known & ~by_model).sum()),
        **m,
        "corrected_accuracy": round(float((c[kept] == t[kept]).mean()) if kept.any() else float("nan"), 4),
        "pseudo_label_accuracy": round(float((predicted[known] == t).mean()), 4),
        "given_label_accuracy": round(float((~wrong).mean()), 4),
        # Does the export help? Changes it makes (decisions included) and how many of them are right.
        "n_changed": int(changed.sum()),
        "changed_precision": round(float((c[changed] == t[changed]).mean()) if changed.any() else float("nan"), 4),
    }


def _detection(g: np.ndarray, t: np.ndarray, f: np.ndarray, clean_prob: np.ndarray) -> dict[str, float | int | None]:
    """The flags' scores against the truth (`g` given, `t` true labels, `f` flags)."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    wrong = np.asarray(g != t, dtype=bool)
    # A flag is a positive prediction of "mislabeled"; no flag (or no mislabeled image) scores 0, not NaN.
    precision, recall, f1, _ = precision_recall_fscore_support(
        wrong, f, average="binary", zero_division=0) if len(wrong) else (0.0, 0.0, 0.0, None)
    auroc = float(roc_auc_score(wrong, 1.0 - clean_prob)) if 0 < wrong.sum() < len(wrong) else float("nan")
    return {
        "n_flagged": int(f.sum()),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "f1": round(float(f1), 4),
        "auroc": round(auroc, 4),
        "flagged_per_mislabeled": round(float(f.sum() / wrong.sum()), 4) if wrong.any() else None,
        **_noise_estimate_error(g, wrong, f),
    }


def _noise_estimate_error(given: np.ndarray, wrong: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """How far the per-class noise estimate (flagged share of each given class) is from the truth, in
    points: the largest and the mean absolute error over the classes."""
    errors = [abs(flagged[given == c].mean() - wrong[given == c].mean()) for c in np.unique(given)]
    if not errors:
        return {"noise_estimate_max_error": float("nan"), "noise_estimate_mean_error": float("nan")}
    return {"noise_estimate_max_error": round(100 * float(max(errors)), 2),
            "noise_estimate_mean_error": round(100 * float(np.mean(errors)), 2)}
