"""A complete run folder written with the engine's own writers, without training (a fraction of a second).

Every file a finished run has is there, in its real format: the marker, config.json, source.json,
status.json recording the stages done, the decoded cache (engine.data.cache.prepare on a tiny image
folder), torch checkpoints, train_losses.npz, predictions.npz, samples.csv, split.json, umap.npy,
metrics.json and a decision store with one decision; with `phase_b`, also phase (a)'s snapshots and the
checkpoints of fine-tuning. The damage tests (tests/test_integrity.py) break one file at a time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import write_image_folder

from engine import config as config_mod
from engine.config import RunConfig
from engine.data.cache import prepare
from engine.data.intake import scan
from engine.review.decisions import DecisionStore
from engine.runs import owner, stages
from engine.runs.atomic import atomic_write_bytes, atomic_write_json, atomic_write_npy, atomic_write_npz
from engine.runs.rundir import RunDir
from engine.train.checkpoint import save_checkpoint

CLASSES = ("cat", "dog")
PER_CLASS = 4
N = len(CLASSES) * PER_CLASS


def write_run(root: Path, *, phase_b: bool = False, cfg: RunConfig | None = None) -> RunDir:
    """root/data (the images) and root/run (a finished phase (a), and (b) when `phase_b`)."""
    data = write_image_folder(root / "data", classes=CLASSES, per_class=PER_CLASS, size=12)
    run = RunDir(root / "run")
    owner.claim(run)
    cfg = cfg or config_mod.with_overrides(RunConfig(), {"data.image_size": 8, "model.stem": "standard"})
    config_mod.save(cfg, run.config)
    record = scan(data)
    prepared = prepare(record, run.data, image_size=8, workers=1)
    atomic_write_json(run.source, {"data": str(data), "root": str(data), "kind": "folder", "truth": None,
                                   "test": None, "classes": list(CLASSES)})
    for name in ("pretrain", "warmup", "train"):
        _checkpoint(run, name, cfg)
    rng = np.random.default_rng(0)
    atomic_write_npz(run.loss_history, losses=rng.random((3, N)).astype(np.float32), upto=np.array(3))
    probs = rng.dirichlet((1.0, 1.0), size=N).astype(np.float32)
    atomic_write_npz(run.predictions, probs=probs, features=rng.normal(size=(N, 4)).astype(np.float32),
                     losses=rng.random((3, N)).astype(np.float32))
    _samples(run, prepared.paths, probs)
    atomic_write_json(run.split, {"means": [0.2, 0.7], "stds": [0.1, 0.1], "weights": [0.6, 0.4],
                                  "threshold": 0.5, "n_flagged": 3, "n": N, "phase": "fit"})
    atomic_write_npy(run.umap, rng.normal(size=(N, 2)).astype(np.float32))
    atomic_write_json(run.metrics, {"phase": "fit", "n": N, "f1": 0.5})
    done = [s.name for s in stages.phase_stages(stages.FIT)]
    if phase_b:
        for src, dst in ((run.samples, run.samples_before), (run.predictions, run.predictions_before),
                         (run.metrics, run.metrics_before)):
            atomic_write_bytes(dst, src.read_bytes())
        for name in ("supcon", "head"):
            _checkpoint(run, name, cfg)
        done += [s.name for s in stages.phase_stages(stages.FINETUNE)]
    run.write_status(state="done", phase="finetune" if phase_b else "fit", completed_stages=done)
    DecisionStore(run.decisions).decide([prepared.paths[0]], "relabel", "dog")
    return run


def _checkpoint(run: RunDir, name: str, cfg: RunConfig) -> None:
    save_checkpoint(run.checkpoint(name), {"net": {"w": torch.arange(4.0)}, "stage": name,
                                           "config": config_mod.to_dict(replace(cfg, finetune_after_fit=False))})


def _samples(run: RunDir, paths: tuple[str, ...], probs: np.ndarray) -> None:
    given = [p.split("/")[0] for p in paths]
    predicted = [CLASSES[int(i)] for i in probs.argmax(1)]
    clean = np.linspace(0.05, 0.95, N)
    df = pd.DataFrame({"index": range(N), "id": [f"{i:016x}" for i in range(N)], "path": paths,
                       "given_label": given, "predicted_label": predicted, "confidence": probs.max(1),
                       "loss": 1 - clean, "loss_norm": 1 - clean, "clean_prob": clean,
                       "flagged": (clean < 0.5).astype(int), "suggested_label": predicted,
                       "suggested_prob": probs.max(1), "given_prob": 0.5, "suspicion": 1 - clean})
    atomic_write_bytes(run.samples, df.to_csv(index=False, lineterminator="\n").encode())
