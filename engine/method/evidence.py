"""More evidence from the same run: near-duplicates and outliers, as samples.csv columns.

    duplicate_group     the group of copies an image belongs to (engine.method.duplicates), -1 for none
    duplicate_conflict  1 when its group carries more than one given label: a certain label error
    outlier_score       how far the image is from all others in the feature space, as a percentile in
                        [0, 1] (engine.method.outliers): the most outlying 1 % have 0.99 or more

Computed where samples.csv is written (the split stage, and phase (b)'s refresh), from the decoded cache
and the neighbour ids the split already found (engine.method.neighbours.nearest_neighbours): the
similarities of those ids serve both, so there is one neighbour search per split.
With `evidence.enabled=false` the columns are still written (no group, no conflict, empty score), so
samples.csv has the same columns in every run. NumPy/SciPy/scikit-learn; no torch.
"""

from __future__ import annotations

import numpy as np

from engine.config import EvidenceConfig
from engine.method.duplicates import NO_GROUP, find_duplicates
from engine.method.neighbours import similarities
from engine.method.outliers import outlier_scores


def evidence_columns(images: np.ndarray, features: np.ndarray, labels: np.ndarray, neighbours: np.ndarray,
                     cfg: EvidenceConfig) -> dict[str, np.ndarray]:
    """engine.review.findings.EVIDENCE_COLUMNS of every image.

    Args:
        images: the cache's images (N, S, S, 3) uint8.
        features: the encoder's features (N, D).
        labels: the given labels (N,).
        neighbours: (N, >= cfg.outlier_neighbors) nearest ids, most similar first (nearest_neighbours).
    """
    n = len(images)
    if not cfg.enabled:
        return {"duplicate_group": np.full(n, NO_GROUP, np.int64), "duplicate_conflict": np.zeros(n, np.int8),
                "outlier_score": np.full(n, np.nan)}
    ids = neighbours[:, :cfg.outlier_neighbors]
    similarity = similarities(features, ids)
    duplicates = find_duplicates(images, labels, neighbours=ids, similarity=similarity,
                                 cosine=cfg.duplicate_cosine, match=cfg.duplicate_match,
                                 detail_match=cfg.duplicate_detail)
    return {"duplicate_group": duplicates.group, "duplicate_conflict": duplicates.conflict,
            "outlier_score": np.round(outlier_scores(similarity), 6)}
