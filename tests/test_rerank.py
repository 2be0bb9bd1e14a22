"""Nearest images (engine.method.neighbours), the re-ranking (engine.method.rerank), `python -m engine rerank`
and its background launcher (engine.runs.jobs.start_rerank)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.method import neighbours as nb
from engine.method import rerank
from engine.review.decisions import DecisionStore
from engine.runs import jobs, worker_lock
from engine.runs.atomic import atomic_write_json
from engine.runs.rundir import RunDir

# ----------------------------------------------------------------------------- nearest images


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_nearest_neighbours_are_exact_cosine_without_the_image_itself(monkeypatch: pytest.MonkeyPatch):
    x = np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32) * np.linspace(0.1, 10, 300)[:, None]
    monkeypatch.setattr(nb, "BLOCK_BYTES", 4 * 7 * 7)  # blocks of 7 x 7: many block pairs, both orientations
    out = nb.nearest_neighbours(x)
    assert out.shape == (300, 5) and out.dtype == np.int32
    assert np.array_equal(out, brute_force(x, 5))  # scale does not matter: cosine
    assert not (out == np.arange(300)[:, None]).any()


@pytest.mark.parametrize("block_bytes", [4 * 2 * 2, nb.BLOCK_BYTES])  # ties inside a block and across blocks
def test_ties_go_to_the_lower_row_and_small_runs_are_padded(block_bytes: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(nb, "BLOCK_BYTES", block_bytes)
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert nb.nearest_neighbours(x).tolist() == [[1, 2, 3, -1, -1], [0, 2, 3, -1, -1], [0, 1, 3, -1, -1],
                                                 [0, 1, 2, -1, -1]]
    assert nb.nearest_neighbours(np.ones((1, 3))).tolist() == [[-1] * 5]


# ----------------------------------------------------------------------------- the refit


def clusters(n_per: int = 40, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim) * 4
    true = np.repeat(np.arange(3), n_per)
    return (centres[true] + rng.normal(size=(len(true), dim))).astype(np.float32), true


def test_fit_head_learns_separable_classes_and_respects_weights():
    x, true = clusters()
    head = rerank.fit_head(nb.l2_normalised(x), true, np.ones(len(true)), 3)
    assert (head.probs(nb.l2_normalised(x)).argmax(1) == true).mean() > 0.95
    with pytest.raises(Exception, match="nothing to re-rank with"):
        rerank.fit_head(x, true, np.zeros(len(true)), 3)


def test_training_rows_sample_the_unreviewed_by_weight_and_keep_every_reviewed_one():
    weights = np.r_[np.full(100, 0.5, np.float32), np.zeros(50, np.float32), np.ones(10, np.float32)]
    reviewed = np.r_[np.zeros(150, bool), np.ones(10, bool)]
    rows, w = rerank.training_rows(weights, reviewed, 1000, seed=1)
    assert sorted(rows) == [*range(100), *range(150, 160)] and np.allclose(w, weights[rows])  # all fit: as is
    rows, w = rerank.training_rows(weights, reviewed, 40, seed=1)
    assert len(rows) == 40 and set(range(150, 160)) <= set(rows) and not set(range(100, 150)) & set(rows)
    assert w[:10].tolist() == [1.0] * 10 and np.isclose(w[10:].sum(), 50.0)  # the sample stands for the total
    assert np.array_equal(rows, rerank.training_rows(weights, reviewed, 40, seed=1)[0])  # seeded


def fake_run(folder: Path) -> tuple[RunDir, np.ndarray]:
    """120 images in 3 feature clusters; the last 8 of cluster 0 are labelled 'b' and flagged."""
    x, true = clusters()
    names = np.array(["a", "b", "c"], dtype=object)
    given = true.copy()
    wrong = np.arange(32, 40)
    given[wrong] = 1
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    probs = np.full((len(true), 3), 0.1, np.float32)
    probs[np.arange(len(true)), given] = 0.8  # the fit learnt the wrong labels: its suggestion is the given one
    clean = np.where(np.isin(np.arange(len(true)), wrong), 0.05, 0.9)
    pd.DataFrame({"index": range(len(true)), "path": [f"img_{i:03d}.png" for i in range(len(true))],
                  "given_label": names[given], "clean_prob": clean, "flagged": (clean < 0.5).astype(int),
                  "suggested_label": names[given], "suspicion": 0.5 * (1 - clean) + 0.5 * 0.2}).to_csv(
        run.samples, index=False)
    np.savez(run.predictions, probs=probs, features=x, losses=np.zeros((1, len(true)), np.float32))
    atomic_write_json(run.source, {"classes": ["a", "b", "c"]})
    return run, true


def test_rerank_run_refreshes_suggestions_and_order_with_the_decisions(tmp_path: Path):
    run, true = fake_run(tmp_path / "run")
    store = DecisionStore(run.decisions)
    store.decide(["img_032.png"], "relabel", "a")
    store.decide(["img_033.png"], "skip")  # unsure: trained as unreviewed
    store.decide(["img_000.png"], "discard")
    meta = rerank.rerank_run(run.path)
    out = pd.read_csv(run.rerank, dtype=str, keep_default_na=False)
    assert tuple(out.columns) == rerank.RERANK_COLUMNS
    assert out["path"].tolist() == pd.read_csv(run.samples)["path"].tolist()
    assert (meta["decisions"], meta["discarded"], meta["fits_decisions"], meta["error"]) == (1, 1, 1.0, None)
    assert meta["samples_sha256"] == rerank.samples_digest(run.samples.read_bytes())
    assert json.loads(run.rerank_meta.read_text())["images"] == 120
    row = out.set_index("path")
    assert (row.loc["img_032.png", "decision_action"], row.loc["img_032.png", "decision_label"]) == ("relabel", "a")
    assert row.loc["img_033.png", "decision_action"] == "" and row.loc["img_000.png", "decision_action"] == "discard"
    # the head trusts the clean-looking images of cluster 0: the wrongly labelled ones now get "a" suggested
    assert set(out["suggested_label"][32:40]) == {"a"}
    suspicion = out["suspicion"].astype(float)
    assert suspicion[32:40].min() > suspicion.drop(range(32, 40)).max()  # and are the most suspicious


def test_record_failure_keeps_the_last_good_rerank(tmp_path: Path):
    run, _ = fake_run(tmp_path / "run")
    rerank.rerank_run(run.path)
    rerank.record_failure(run.path, "broken")
    meta = json.loads(run.rerank_meta.read_text())
    assert meta["error"] == "broken" and meta["images"] == 120 and meta["failed_at"]


# ----------------------------------------------------------------------------- the command and its launcher


def test_cli_rerank(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["rerank", str(tmp_path / "none")]) == 2
    assert "has no samples.csv" in capsys.readouterr().err
    run, _ = fake_run(tmp_path / "run")
    assert main(["rerank", str(run.path)]) == 0
    assert capsys.readouterr().out.strip().startswith("re-ranked 120 images with 0 decisions in ")
    lock = worker_lock.acquire(run, path=run.rerank_lock)
    try:
        assert main(["rerank", str(run.path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: a re-ranking of {run.path} is already running"
    finally:
        lock.close()
    DecisionStore(run.decisions).decide(["img_001.png"], "relabel", "no-such-class")
    assert main(["rerank", str(run.path)]) == 2
    assert "not a class of this run" in capsys.readouterr().err
    assert "not a class of this run" in json.loads(run.rerank_meta.read_text())["error"]


def test_start_rerank_hands_its_lock_to_the_child_and_runs_one_at_a_time(tmp_path: Path):
    run, _ = fake_run(tmp_path / "run")
    # a stand-in child: adopts the lock the launcher passed, holds it a moment, then exits
    child = ("import os, sys, time; from engine.runs import worker_lock; from engine.runs.rundir import RunDir; "
             "r = RunDir(sys.argv[2]); lock = worker_lock.inherited(r, path=r.rerank_lock, "
             "variable=worker_lock.RERANK_FD_VARIABLE); assert lock is not None; time.sleep(3)")
    pid = jobs.start_rerank(run.path, command_prefix=[sys.executable, "-c", child])
    assert pid and jobs.rerank_running(run.path)  # held from the launch on, without a gap
    assert jobs.start_rerank(run.path, command_prefix=[sys.executable, "-c", child]) is None
    deadline = time.monotonic() + 60
    while jobs.rerank_running(run.path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not jobs.rerank_running(run.path)
    assert run.rerank_log.read_text().startswith("# ")
    with pytest.raises(jobs.JobError, match="has no samples.csv yet"):
        jobs.start_rerank(tmp_path / "empty")


@pytest.mark.slow
def test_start_rerank_runs_the_real_command(tmp_path: Path):
    run, _ = fake_run(tmp_path / "run")
    assert jobs.start_rerank(run.path)
    deadline = time.monotonic() + 240
    while (jobs.rerank_running(run.path) or not run.rerank.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(pd.read_csv(run.rerank)) == 120, run.rerank_log.read_text()
