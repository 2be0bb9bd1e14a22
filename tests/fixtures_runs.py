"""Fake but realistic run folders for the app tests (the run folder contract, without training).

`write_fake_run` writes everything `python -m engine fit` leaves behind — config.json, source.json
pointing at a folder of tiny PNGs, status.json "done", events.jsonl, samples.csv with every column,
split.json, umap.npy, predictions.npz (features that cluster by the true label), neighbours.npy,
metrics.json — with known values the tests assert on: which images are flagged, their suspicion order,
their suggested labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine.config import RunConfig, to_dict
from engine.method.neighbours import nearest_neighbours
from engine.runs import worker_lock
from engine.runs.atomic import atomic_write_json, now_iso
from engine.runs.rundir import RunDir

CLASSES = ("cat", "dog", "fox")
FIT_STAGES = ("prepare", "pretrain", "warmup", "train", "predict", "split", "embed")


@dataclass(frozen=True)
class FakeRun:
    run: RunDir
    data: Path
    samples: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.run.path.name

    @property
    def flagged(self) -> pd.DataFrame:
        """Flagged rows in review order (suspicion, highest first)."""
        return self.samples[self.samples["flagged"] == 1].sort_values("suspicion", ascending=False)


def write_image_classes(root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = 10, size: int = 12) -> Path:
    """root/<class>/img_<j>.png, solid colours (distinct per class and image)."""
    for ci, cls in enumerate(classes):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            colour = ((70 * ci + 30) % 256, (11 * j + 40) % 256, (120 + 60 * ci) % 256)
            Image.new("RGB", (size, size), colour).save(folder / f"img_{j:02d}.png")
    return root


def fake_samples(classes: tuple[str, ...], per_class: int, seed: int = 0) -> pd.DataFrame:
    """samples.csv rows: the last 3 images of each class are flagged, with a different suggested label."""
    rng = np.random.default_rng(seed)
    rows = []
    for ci, cls in enumerate(classes):
        for j in range(per_class):
            flagged = j >= per_class - 3
            other = classes[(ci + 1) % len(classes)]
            suggested = other if flagged else cls
            clean_prob = float(rng.uniform(0.02, 0.45) if flagged else rng.uniform(0.6, 0.99))
            loss_norm = float(1 - clean_prob + rng.uniform(-0.02, 0.02))
            probs = {c: 0.05 for c in classes}
            probs[suggested] = 0.8 if flagged else 0.9
            top = sorted(probs.items(), key=lambda kv: -kv[1])
            rows.append({
                "path": f"{cls}/img_{j:02d}.png", "given_label": cls, "predicted_label": suggested,
                "confidence": top[0][1], "loss": loss_norm * 3, "loss_norm": min(max(loss_norm, 0.0), 1.0),
                "clean_prob": clean_prob, "flagged": int(flagged), "suggested_label": suggested,
                "suggested_prob": probs[suggested], "given_prob": probs[cls],
                "top1_label": top[0][0], "top1_prob": top[0][1], "top2_label": top[1][0], "top2_prob": top[1][1],
                "top3_label": top[2][0], "top3_prob": top[2][1],
                "true_label": other if flagged and j % 2 == 0 else cls,
                "neighbour_agreement": 0.8 if flagged else 0.9, "auto_relabel": int(flagged),
            })
    df = pd.DataFrame(rows)
    df.insert(0, "index", np.arange(len(df)))
    df.insert(1, "id", [f"{i:016x}" for i in range(len(df))])
    # distinct suspicions, not in file order, so the review order is something to test
    df["suspicion"] = np.round(1 - df["clean_prob"] + rng.uniform(0, 1e-3, len(df)), 6)
    return df[["index", "id", "path", "given_label", "predicted_label", "confidence", "loss", "loss_norm",
               "clean_prob", "flagged", "suggested_label", "suggested_prob", "given_prob", "suspicion",
               "top1_label", "top1_prob", "top2_label", "top2_prob", "top3_label", "top3_prob",
               "neighbour_agreement", "auto_relabel", "true_label"]]


def fake_features(samples: pd.DataFrame, classes: tuple[str, ...], dim: int = 16) -> np.ndarray:
    """Encoder-like features: a cluster per true label, so an image's nearest images share its true label."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(len(classes), dim)) * 3
    true = samples["true_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return (centres[true] + rng.normal(size=(len(samples), dim))).astype(np.float32)


def write_fake_run(
    runs_root: Path,
    run_id: str = "2026-11-27T10-00-00_test",
    *,
    data: Path | None = None,
    classes: tuple[str, ...] = CLASSES,
    per_class: int = 10,
    state: str = "done",
    with_umap: bool = True,
    with_metrics: bool = True,
    loss: str = "elr",
) -> FakeRun:
    """Write a finished phase-(a) run folder at runs_root/run_id (images in `data` or beside the runs)."""
    run = RunDir(Path(runs_root) / run_id)
    run.path.mkdir(parents=True, exist_ok=True)
    data = data or Path(runs_root).parent / f"data_{run_id}"
    if not data.exists():
        write_image_classes(data, classes, per_class)
    cfg = to_dict(RunConfig())
    cfg["classify"]["loss"] = loss
    atomic_write_json(run.config, cfg)
    atomic_write_json(run.source, {"data": str(data), "root": str(data), "kind": "folder", "truth": None,
                                   "test": None, "classes": list(classes)})
    atomic_write_json(run.status_file, {
        "state": state, "phase": "fit", "stage": "embed", "step": 1, "total": 1, "message": "finished",
        "images_per_s": None, "eta_s": None, "pid": None, "started_at": "2026-11-27T10:00:00.000+00:00",
        "updated_at": now_iso(), "completed_stages": list(FIT_STAGES) if state == "done" else [], "error": None,
    })
    for stage, epochs in (("pretrain", 2), ("warmup", 1), ("train", 3)):
        run.append_event(kind="stage", stage=stage, state="start", seconds=0.0)
        for e in range(1, epochs + 1):
            run.append_event(kind="epoch", stage=stage, epoch=e, epochs=epochs, loss=round(2.0 / e, 3), lr=0.01,
                             images_per_s=500.0, seconds=0.1)
        run.append_event(kind="stage", stage=stage, state="done", seconds=0.3 * epochs)
    samples = fake_samples(classes, per_class)
    if state == "done":
        samples.to_csv(run.samples, index=False)
        per = {c: {"n": per_class, "flagged": 3, "noise_rate": 3 / per_class} for c in classes}
        atomic_write_json(run.split, {
            "means": [0.2, 0.75], "stds": [0.08, 0.1], "weights": [0.7, 0.3], "threshold": 0.5,
            "loss_threshold": 0.55, "n_flagged": int(samples["flagged"].sum()), "n": len(samples),
            "degenerate": False, "per_class": per,
        })
        if with_umap:
            rng = np.random.default_rng(1)
            np.save(run.umap, rng.normal(size=(len(samples), 2)).astype(np.float32))
        features = fake_features(samples, classes)
        probs = np.full((len(samples), len(classes)), 0.05, dtype=np.float32)
        probs[np.arange(len(samples)), samples["suggested_label"].map({c: i for i, c in enumerate(classes)})] = 0.9
        np.savez(run.predictions, probs=probs, features=features, losses=samples["loss"].to_numpy(np.float32)[None])
        np.save(run.neighbours, nearest_neighbours(features))
        if with_metrics:
            atomic_write_json(run.metrics, {
                "phase": "fit", "n": len(samples), "n_mislabeled": 6, "precision": 0.667, "recall": 1.0,
                "f1": 0.8, "auroc": 0.95, "corrected_accuracy": 0.9, "pseudo_label_accuracy": 0.88,
                "given_label_accuracy": 0.8})
        run.append_event(kind="summary", phase="fit", n_flagged=int(samples["flagged"].sum()))
    return FakeRun(run=run, data=data, samples=samples)


def write_phase_b(fake: FakeRun, changed: int = 2) -> None:
    """Turn a fake run into one that went through fine-tuning (samples_phase_a.csv, metrics_phase_a.json)."""
    run = fake.run
    run.samples.replace(run.samples_before)
    after = fake.samples.copy()
    flagged_rows = after.index[after["flagged"] == 1][:changed]
    after.loc[flagged_rows, "suggested_label"] = after.loc[flagged_rows, "given_label"]
    after.loc[flagged_rows, "flagged"] = 0
    after.to_csv(run.samples, index=False)
    if run.metrics.exists():
        run.metrics.replace(run.path / "metrics_phase_a.json")
        atomic_write_json(run.metrics, {**json.loads((run.path / "metrics_phase_a.json").read_text()),
                                        "phase": "finetune", "f1": 0.9})
    run.write_status(phase="finetune", stage="refresh", completed_stages=["supcon", "head", "refresh"])


# ----------------------------------------------------------------------------- driving the app

REPO = Path(__file__).resolve().parent.parent
PAGE_FILES = {
    "data": "pages/1_data.py", "train": "pages/2_train.py", "inspect": "pages/3_inspect.py",
    "review": "pages/4_review.py", "finetune": "pages/5_finetune.py", "export": "pages/6_export.py",
}


def open_page(name: str, *, run_id: str | None = None, data: Path | None = None, params: dict | None = None,
              timeout: float = 30):
    """Run app.py (navigation + sidebar) on one page, as a browser opening `/?run=<id>` would (a new session:
    also what a refresh is; `params` are further query parameters of the URL)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    if run_id:
        at.query_params["run"] = run_id
    if data:
        at.query_params["data"] = str(data)
    at.switch_page(PAGE_FILES[name])
    return at.run()


def hold_worker(run: RunDir) -> worker_lock.WorkerLock:
    """Hold the run's worker lock, as its live worker would (released when the returned lock is closed or
    garbage-collected): the run then reads as active."""
    lock = worker_lock.acquire(run)
    assert lock is not None, f"{run.path} has a worker already"
    return lock


@dataclass
class FakeJobs:
    """Stands in for engine.runs.jobs' process control in app tests: records calls, starts nothing."""

    calls: list[tuple[str, tuple, dict]]
    devices: dict
    workers: dict[Path, worker_lock.WorkerLock] = field(default_factory=dict)  # runs this test "started"

    def start(self, data: Path, run_dir: Path, flags=(), **kwargs) -> int:
        self.calls.append(("start", (Path(data), Path(run_dir), list(flags)), kwargs))
        self.workers[Path(run_dir)] = _queued(Path(run_dir), "fit", data, flags)
        return 4242

    def start_finetune(self, run_dir: Path, flags=(), **kwargs) -> int:
        self.calls.append(("start_finetune", (Path(run_dir), list(flags)), kwargs))
        self.workers[Path(run_dir)] = _queued(Path(run_dir), "finetune", None)
        return 4243

    def resume(self, run_dir: Path, **kwargs) -> int:
        self.calls.append(("resume", (Path(run_dir),), kwargs))
        return 4244

    def stop(self, run_dir: Path, **kwargs) -> dict:
        self.calls.append(("stop", (Path(run_dir),), kwargs))
        status = RunDir(run_dir).write_status(state="cancelled")
        worker = self.workers.pop(Path(run_dir), None)
        if worker is not None:
            worker.close()
        return status

    def start_rerank(self, run_dir: Path, **kwargs) -> int | None:
        """Records the call and re-ranks at once, in this process (the real command does the same work)."""
        from engine.method.rerank import rerank_run

        self.calls.append(("start_rerank", (Path(run_dir),), kwargs))
        rerank_run(Path(run_dir))
        return 4245

    def rerank_running(self, run_dir: Path) -> bool:
        return False

    def detect_devices(self, *args, **kwargs) -> dict:
        return dict(self.devices)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def _queued(run_dir: Path, phase: str, data: Path | None, flags=()) -> worker_lock.WorkerLock:
    import os
    import sys

    run = RunDir(run_dir)
    # this test process stands in for the worker: it holds the run's lock, so the run reads as active
    lock = hold_worker(run)
    run.write_status(state="queued", phase=phase, stage="prepare" if phase == "fit" else "supcon", step=0, total=0,
                     pid=os.getpid(), started_at=now_iso(), message="starting")
    if data is not None and not run.source.exists():
        command = [sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run_dir), *flags, "--quiet"]
        atomic_write_json(run.launch, {"command": command, "data": str(data), "phase": phase, "at": now_iso()})
    return lock


def install_fake_jobs(monkeypatch, devices: dict | None = None) -> FakeJobs:
    from engine.runs import jobs
    from ui import devices as ui_devices

    fake = FakeJobs(calls=[], devices=devices or {"cuda": False, "devices": [], "default": "cpu"})
    for name in ("start", "start_finetune", "resume", "stop", "detect_devices", "start_rerank", "rerank_running"):
        monkeypatch.setattr(jobs, name, getattr(fake, name))
    ui_devices.detected_devices.clear()
    return fake
