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

# Shown with a model below the relabel bar's competence. Why: such a model's losses cannot tell hard images
# from wrong labels, so the mixture's share of "noisy" images is not a measurement of the noise (measured,
# README Findings: clean CIFAR-10 and CIFAR-10N aggre, 9 % wrong, gave the same mixture, 16 % flagged).
ROUGH_COUNT = ("With a model this unsure, hard images and wrong labels look alike to it: the number flagged and "
               "the noise rates below are rough (too many on clean data, too few under heavy noise). Read the "
               "flags as a review order, most suspicious first.")
