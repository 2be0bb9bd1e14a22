"""A finished run with a truth file, read back for the benches that rescore it without training
(bench/queue_order.py, bench/flag_count.py): one place that knows which files hold what."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.method.out_of_fold import out_of_fold_probs  # noqa: E402
from engine.runs.seeds import stream_seed  # noqa: E402


@dataclass(frozen=True)
class SavedRun:
    samples: pd.DataFrame  # samples.csv, with true_label
    config: dict  # config.json
    classes: list[str]  # source.json's classes
    given: np.ndarray  # (N,) given label indices
    wrong: np.ndarray  # (N,) bool, given != true
    features: np.ndarray  # predictions.npz
    probs: np.ndarray
    losses: np.ndarray

    @property
    def seed(self) -> int:
        """The seed the run's split stage used (engine.train.pipeline: "split/mixture")."""
        return stream_seed(int(self.config["seed"]), "split/mixture")

    def out_of_fold(self) -> np.ndarray:
        """The out-of-fold probabilities the run's review order used, rebuilt with its seed (the
        classifier's own where a class is too small to fold, as in the run)."""
        oof = out_of_fold_probs(self.features, self.given, len(self.classes), seed=self.seed)
        return self.probs if oof is None else oof


def load_saved_run(run: Path) -> SavedRun:
    s = pd.read_csv(run / "samples.csv", dtype={"path": str, "given_label": str, "true_label": str},
                    keep_default_na=False)
    if "true_label" not in s:
        raise SystemExit(f"{run}: samples.csv has no true_label (fit it with --truth)")
    cfg = json.loads((run / "config.json").read_text())
    classes = json.loads((run / "source.json").read_text())["classes"]
    index = {c: i for i, c in enumerate(classes)}
    with np.load(run / "predictions.npz") as z:
        features, probs = z["features"], z["probs"]
        losses = z["losses"] if "losses" in z.files else np.zeros((0, len(s)), np.float32)
    return SavedRun(s, cfg, classes, s["given_label"].map(index).to_numpy(),
                    (s["given_label"] != s["true_label"]).to_numpy(), features, probs, losses)
