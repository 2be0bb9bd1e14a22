"""The words a person reads for the engine's names: metrics, states (one place, every page uses them)."""

from __future__ import annotations

# metrics.json keys -> what the pages call them, in the order they are shown
METRIC_NAMES = {
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "auroc": "AUROC",
    "corrected_accuracy": "Exported labels right",
    "pseudo_label_accuracy": "Predicted labels right",
    "given_label_accuracy": "Given labels right",
}
METRIC_HELP = {
    "precision": "Of the flagged images, the share really mislabeled",
    "recall": "Of the really mislabeled images, the share flagged",
    "f1": "Harmonic mean of precision and recall",
    "auroc": "How well the clean probability ranks mislabeled images below clean ones (1 = perfectly)",
    "corrected_accuracy": "Share of the exported labels (your decisions, else the suggestions) that are right",
    "pseudo_label_accuracy": "Share of images whose predicted label is the true one",
    "given_label_accuracy": "Share of the given labels that are right (before any correction)",
}

