"""Re-rank the review queue with the decisions made so far: a classifier head refitted on cached features.

While someone reviews, every decision is a trusted label the phase-(a) classifier never saw. Re-ranking
refits a head on the encoder features the run already has (predictions.npz: no image is decoded, no
network runs) and refreshes, for every image, the suggested label and the review order:

* model: softmax regression (multinomial logistic regression with an L2 penalty) on the L2-normalised
  features, fitted with L-BFGS (SciPy), in float32 matrix products: seconds on a CPU for 50,000 images
  (bench/rerank_speed.py);
* training set: reviewed images with the reviewer's label and weight `DECISION_WEIGHT` (kept: the given
  label; relabeled: the new one), every other image with its given label weighted by its clean
  probability (the mixture's trust in that label); discarded images are left out and a skip ("unsure")
  counts as not reviewed, as in phase (b);
* output: the refitted head's probabilities give the suggestion (top-1) and p_given; the new suspicion
  is the split's formula (engine.method.selection.suspicion) with the mixture's clean probability and the
  refitted p_given, so the two orders are comparable and only the model's half moved.

`rerank_run` reads a run and writes RUN/rerank.csv (one row per samples.csv row, with the decision each
row was trained with, so the app can count the decisions made since) and RUN/rerank.json (what it was
made from: the sha256 of the samples.csv it belongs to). Torch-free; scikit-learn only through
selection. Runs in the worker process style: `python -m engine rerank RUN`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from engine import config as config_mod
from engine.errors import UserError
from engine.method.neighbours import l2_normalised
from engine.method.selection import suspicion
from engine.review.decisions import load_decisions
from engine.review.queue import samples_digest
from engine.review.trusted import trusted_labels
from engine.runs.atomic import atomic_write_json, atomic_write_text, now_iso, read_json
from engine.runs.rundir import RunDir
from engine.runs.seeds import stream_seed

DECISION_WEIGHT = 1.0  # a reviewed image's weight: fully trusted, as in phase (b)
MAX_ROWS = 20_000  # rows the head trains on; beyond, a weighted sample of the unreviewed (training_rows)
SAMPLE_STREAM = "rerank/sample"  # the seed stream of that sample (engine.runs.seeds)
L2 = 1e-4  # penalty on the weights (per unit of total sample weight)
MAX_ITER = 300
# rerank.csv: one row per samples.csv row; top-k columns for k <= 3 classes, as in samples.csv
RERANK_COLUMNS = ("index", "path", "suggested_label", "suggested_prob", "given_prob", "suspicion", "top1_label",
                  "top1_prob", "top2_label", "top2_prob", "top3_label", "top3_prob", "decision_action",
                  "decision_label")


@dataclass(frozen=True)
class Head:
    weights: np.ndarray  # (D, C) float32
    bias: np.ndarray  # (C,) float32
    iterations: int

    def probs(self, x: np.ndarray) -> np.ndarray:
        return _softmax(x @ self.weights + self.bias)


def fit_head(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_classes: int, *, l2: float = L2,
             max_iter: int = MAX_ITER) -> Head:
    """Weighted softmax regression: minimise sum_i w_i CE(x_i, y_i) / sum_i w_i + l2/2 |W|^2 (bias free).

    Args:
        x: (N, D) float32 features (L2-normalised by the caller); labels: (N,) int; weights: (N,) >= 0.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    xt = np.ascontiguousarray(x.T)  # the gradient's product runs about 1.5x faster on a contiguous transpose
    w = np.asarray(weights, dtype=np.float32)
    total = float(w.sum())
    if total <= 0:
        raise UserError("nothing to re-rank with: every image is discarded or has a clean probability of 0")
    w = w / total
    d = x.shape[1]
    onehot = np.zeros((len(x), n_classes), dtype=np.float32)
    onehot[np.arange(len(x)), labels] = 1.0

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        big_w = theta[: d * n_classes].reshape(d, n_classes).astype(np.float32)
        b = theta[d * n_classes:].astype(np.float32)
        logits = x @ big_w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        log_p = logits - log_z
        loss = -float((w * (log_p * onehot).sum(axis=1)).sum()) + 0.5 * l2 * float((big_w.astype(np.float64) ** 2).sum())
        residual = (np.exp(log_p) - onehot) * w[:, None]  # d loss / d logits
        grad_w = (xt @ residual).astype(np.float64) + l2 * big_w
        grad_b = residual.sum(axis=0).astype(np.float64)
        return loss, np.concatenate([grad_w.ravel(), grad_b])

    result = minimize(loss_and_grad, np.zeros(d * n_classes + n_classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter})
    theta = result.x
    return Head(theta[: d * n_classes].reshape(d, n_classes).astype(np.float32),
                theta[d * n_classes:].astype(np.float32), int(result.nit))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Targets:
    labels: np.ndarray  # (N,) int64: the decision's label where reviewed, else the given label
    weights: np.ndarray  # (N,) float32: DECISION_WEIGHT where reviewed, 0 where discarded, else clean_prob
    action: np.ndarray  # (N,) object: the decision each row was trained with ("" where none)
    label: np.ndarray  # (N,) object: its label ("" where none)


def rerank_targets(paths: list[str], given: np.ndarray, clean_prob: np.ndarray, classes: tuple[str, ...],
                   decisions: dict) -> Targets:
    """Training labels and weights from the trusted decisions (no skips) and the mixture's clean probability."""
    trusted = trusted_labels(paths, given, classes, decisions)
    weights = np.clip(np.asarray(clean_prob, dtype=np.float32), 0.0, 1.0)
    weights = np.where(trusted.discarded, 0.0, np.where(trusted.decided, DECISION_WEIGHT, weights)).astype(np.float32)
    return Targets(trusted.labels, weights, trusted.action, trusted.label)


def training_rows(weights: np.ndarray, reviewed: np.ndarray, max_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows the head trains on and their weights: every reviewed row, and the other rows with a weight
    above 0 — all of them up to `max_rows` in total, else a sample drawn in proportion to their weights
    (each then weighs the same share of the total it stands for), which keeps the objective's expectation
    and makes the fit's cost independent of the number of images."""
    candidates = np.flatnonzero(weights > 0)
    decided = candidates[reviewed[candidates]]
    others = candidates[~reviewed[candidates]]
    room = max_rows - len(decided)
    if len(others) <= room:
        return candidates, weights[candidates]
    p = weights[others].astype(np.float64)
    picked = np.sort(np.random.default_rng(seed).choice(others, size=max(room, 1), replace=False, p=p / p.sum()))
    share = np.full(len(picked), p.sum() / len(picked), dtype=np.float32)
    rows = np.concatenate([decided, picked])
    return rows, np.concatenate([weights[decided], share])


def _run_seed(run: RunDir) -> int:
    return config_mod.load(run.config).seed if run.config.exists() else 0


def rerank_run(run_dir: Path) -> dict:
    """Re-rank a run (see the module docstring); returns what rerank.json records."""
    run = RunDir(run_dir)
    t0 = time.perf_counter()
    if not run.samples.exists() or not run.predictions.exists():
        raise UserError(f"{run.path} has no samples.csv or predictions.npz yet: run `python -m engine fit` first")
    raw = run.samples.read_bytes()
    samples = pd.read_csv(io.BytesIO(raw), dtype={"path": str, "given_label": str}, keep_default_na=False)
    with np.load(run.predictions) as z:
        features = z["features"]
    if len(features) != len(samples):
        raise UserError(f"{run.predictions.name} has {len(features)} rows and {run.samples.name} {len(samples)}: "
                        "they are from different fits; run `python -m engine fit` again")
    classes = tuple((read_json(run.source, default={}) or {}).get("classes") or sorted(set(samples["given_label"])))
    index = {c: i for i, c in enumerate(classes)}
    given = samples["given_label"].map(index).to_numpy()
    paths = samples["path"].tolist()
    targets = rerank_targets(paths, given, samples["clean_prob"].to_numpy(float), classes, load_decisions(run.decisions))
    x = l2_normalised(features)
    seed = stream_seed(_run_seed(run), SAMPLE_STREAM)
    rows_used, row_weights = training_rows(targets.weights, targets.action != "", MAX_ROWS, seed)
    head = fit_head(x[rows_used], targets.labels[rows_used], row_weights, len(classes))
    probs = head.probs(x)
    names = np.asarray(classes, dtype=object)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    top = best[:, 0]
    rows = np.arange(len(samples))
    table = pd.DataFrame({
        "index": samples["index"] if "index" in samples else rows,
        "path": paths,
        "suggested_label": names[top],
        "suggested_prob": probs[rows, top].round(6),
        "given_prob": probs[rows, given].round(6),
        "suspicion": np.round(suspicion(samples["clean_prob"].to_numpy(float), probs, given), 6),
    })
    for k in range(best.shape[1]):
        table[f"top{k + 1}_label"] = names[best[:, k]]
        table[f"top{k + 1}_prob"] = probs[rows, best[:, k]].round(6)
    table["decision_action"] = targets.action
    table["decision_label"] = targets.label
    reviewed = (targets.action != "") & (targets.action != "discard")
    fitted = float((top[reviewed] == targets.labels[reviewed]).mean()) if reviewed.any() else None
    atomic_write_text(run.rerank, table.to_csv(index=False, lineterminator="\n"))
    meta = {"error": None, "at": now_iso(), "samples_sha256": samples_digest(raw), "images": len(samples),
            "decisions": int(reviewed.sum()), "discarded": int((targets.action == "discard").sum()),
            "fits_decisions": fitted, "iterations": head.iterations,
            "seconds": round(time.perf_counter() - t0, 3)}
    atomic_write_json(run.rerank_meta, meta)
    return meta


def record_failure(run_dir: Path, message: str) -> None:
    """Say in rerank.json why the last re-ranking failed, keeping what the last good one recorded."""
    run = RunDir(run_dir)
    meta = read_json(run.rerank_meta, default=None)
    meta = meta if isinstance(meta, dict) else {}
    atomic_write_json(run.rerank_meta, {**meta, "error": message, "failed_at": now_iso()})
