"""End to end through the CLI on a tiny folder: fit, finetune with review decisions, export, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine.cli import main as cli_main
from engine.review.decisions import DecisionStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--pretrain-epochs", "2", "--epochs", "3", "--batch-size", "8", "--image-size", "16",
        "--seed", "3", "--quiet"]
SAMPLE_COLUMNS = {"index", "id", "path", "given_label", "predicted_label", "confidence", "loss", "loss_norm",
                  "clean_prob", "flagged", "suggested_label", "suggested_prob", "given_prob", "suspicion",
                  "top1_label", "top1_prob", "top2_label", "top2_prob", "top3_label", "top3_prob", "true_label",
                  "duplicate_group", "duplicate_conflict", "outlier_score"}


def engine(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    from conftest import write_pattern_folder

    base = tmp_path_factory.mktemp("fit")
    data = write_pattern_folder(base / "data")
    run = base / "run"
    r = engine("fit", data, "--run-dir", run, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return data, run, r


@pytest.mark.slow
def test_fit_writes_the_run_folder(fitted) -> None:
    data, run, r = fitted
    for name in ("config.json", "source.json", "status.json", "events.jsonl", "samples.csv", "split.json",
                 "umap.npy", "metrics.json", "predictions.npz", "data/images.npy", "checkpoints/train.pt"):
        assert (run / name).exists(), name
    s = pd.read_csv(run / "samples.csv", dtype={"path": str})
    assert SAMPLE_COLUMNS <= set(s.columns)
    assert len(s) == 36 and s["index"].tolist() == list(range(36))
    assert set(s["path"]) == {p.relative_to(data).as_posix() for p in data.rglob("*.png")}
    assert s["clean_prob"].between(0, 1).all() and s["suspicion"].between(0, 1).all()
    # flagged: the loss split, and every member of a group of copies whose labels disagree
    assert set(s["flagged"]) <= {0, 1} and (s["flagged"] == ((s["clean_prob"] < 0.5) | (s["duplicate_conflict"] == 1))).all()
    assert s["outlier_score"].between(0, 1).all() and s["outlier_score"].max() == 1.0
    assert (s["top1_prob"] >= s["top2_prob"]).all() and (s["top1_label"] == s["predicted_label"]).all()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done"
    assert json.loads((run / "config.json").read_text())["model"]["stem"] == "standard"  # resolved, not "auto"
    assert status["completed_stages"][:4] == ["prepare", "pretrain", "warmup", "train"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 36 and metrics["n_mislabeled"] == 9 and metrics["phase"] == "fit"
    assert "accuracy vs truth: predicted labels" in r.stdout  # truth.csv in the data folder is found
    epochs = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["kind"] == "epoch"]
    assert [(e["stage"], e["epoch"]) for e in epochs if e["stage"] != "warmup"] == [
        ("pretrain", 1), ("pretrain", 2), ("train", 1), ("train", 2), ("train", 3)]
    import numpy as np

    assert np.load(run / "umap.npy").shape == (36, 2)


@pytest.mark.slow
def test_samples_carry_copies_and_outliers_and_conflicts_are_flagged(fitted, tmp_path: Path) -> None:
    _, run, _ = fitted
    s = pd.read_csv(run / "samples.csv", dtype={"path": str})
    assert {"duplicate_group", "duplicate_conflict", "outlier_score"} <= set(s.columns)
    assert (s.loc[s["duplicate_conflict"] == 1, "flagged"] == 1).all()
    assert sorted(s["outlier_score"].round(6)) == sorted(((s["outlier_score"].rank() - 1) / 35).round(6))
    out = tmp_path / "labels.csv"
    assert cli_main(["export", str(run), "--out", str(out), "--drop-outliers", "1"]) == 0
    exported = pd.read_csv(out, keep_default_na=False)
    assert (exported["status"] == "outlier-dropped").sum() == 1 and "outlier_score" in exported


def test_checkpoints_load_with_weights_only(fitted) -> None:
    _, run, _ = fitted
    for stage in ("pretrain", "warmup", "train"):
        state = torch.load(run / "checkpoints" / f"{stage}.pt", weights_only=True)
        assert state["stage"] == stage
        assert any(k.startswith("encoder.") for k in state["net"]) and all(torch.is_tensor(v) for v in state["net"].values())
        assert state["config"]["data"]["image_size"] == 16


@pytest.mark.slow
def test_rerun_with_same_config_skips_finished_stages(fitted) -> None:
    data, run, _ = fitted
    before = (run / "samples.csv").read_bytes()
    r = engine("fit", data, "--run-dir", run, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    last_start = max(i for i, e in enumerate(events) if e.get("stage") == "prepare")
    skipped = {e["stage"] for e in events[last_start:] if e.get("state") == "skipped"}
    assert {"prepare", "pretrain", "warmup", "train", "predict"} <= skipped
    assert (run / "samples.csv").read_bytes() == before


def test_changed_settings_in_an_existing_run_are_refused(fitted) -> None:
    data, run, _ = fitted
    code = cli_main(["fit", str(data), "--run-dir", str(run), *TINY[:-1], "--epochs", "5", "--quiet"])
    assert code == 2


def test_resume_without_a_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["fit", str(tmp_path), "--run-dir", str(tmp_path / "none"), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err


def test_unusable_data_fails_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code = cli_main(["fit", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"), *TINY])
    assert code == 2 and "error:" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


@pytest.mark.slow
def test_finetune_uses_decisions_and_export_reflects_them(fitted, tmp_path: Path) -> None:
    data, run, _ = fitted
    s = pd.read_csv(run / "samples.csv", dtype=str)
    first, second, third = s["path"].iloc[0], s["path"].iloc[1], s["path"].iloc[2]
    store = DecisionStore(run / "decisions.sqlite")
    store.decide([first], "relabel", "vertical")
    store.decide([second], "discard")
    store.decide([third], "keep", s["given_label"].iloc[2])
    map_a = np.load(run / "umap.npy")
    r = engine("finetune", run, "--epochs", "1", "--set", "finetune.head_epochs=2", "--set", "finetune.full_epochs=1",
               "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "samples_phase_a.csv").exists() and (run / "metrics_phase_a.json").exists()
    assert json.loads((run / "metrics.json").read_text())["phase"] == "finetune"
    assert "fine-tuning with 2 reviewed and 1 discarded images" in r.stderr or "finetune:" in r.stdout
    # 2 reviewed images: none can be held out to check phase (b), so phase (a)'s model stays, with the decisions
    check = json.loads((run / "checkpoints" / "finetune.json").read_text())["check"]
    assert check["n"] == 0 and check["kept"] is False and check["enabled"] is True
    with np.load(run / "predictions_phase_a.npz") as a, np.load(run / "predictions.npz") as b:
        assert np.array_equal(a["probs"], b["probs"]) and np.array_equal(a["features"], b["features"])
    np.testing.assert_allclose(np.load(run / "umap.npy"), map_a, atol=1e-5)  # phase (a)'s map again
    after = pd.read_csv(run / "samples.csv", dtype=str).set_index("path")
    assert after.loc[first, "flagged"] == "0" and float(after.loc[first, "clean_prob"]) == 1.0  # decided: clean
    out = tmp_path / "labels.csv"
    r = engine("export", run, "--out", out, "--format", "csv")
    assert r.returncode == 0, r.stderr
    e = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("path")
    assert e.loc[first, ["label", "status"]].tolist() == ["vertical", "relabeled" if s["given_label"].iloc[0] != "vertical" else "kept"]
    assert e.loc[second, "status"] == "discarded" and e.loc[second, "label"] == ""
    assert e.loc[third, "status"] == "kept"
    assert len(e) == 36

    # the same decisions and settings again: nothing to redo
    samples_b = (run / "samples.csv").read_bytes()
    again = engine("finetune", run, "--epochs", "1", "--set", "finetune.head_epochs=2", "--set",
                   "finetune.full_epochs=1", "--quiet")
    assert again.returncode == 0 and (run / "samples.csv").read_bytes() == samples_b
    # fit again on a fine-tuned run: phase (a) is done and must not be rebuilt from phase (b)'s predictions
    refit = engine("fit", data, "--run-dir", run, *TINY)
    assert refit.returncode == 0, refit.stderr[-2000:]
    assert (run / "samples.csv").read_bytes() == samples_b
    assert json.loads((run / "metrics.json").read_text())["phase"] == "finetune"


@pytest.mark.slow
def test_finetune_without_its_check_keeps_the_fine_tuned_network(fitted, tmp_path: Path) -> None:
    """finetune.check_share=0 turns the held-out check off: phase (b)'s network replaces phase (a)'s."""
    data, run = fitted[0], tmp_path / "run"
    assert engine("fit", data, "--run-dir", run, *TINY).returncode == 0
    s = pd.read_csv(run / "samples.csv", dtype=str)
    DecisionStore(run / "decisions.sqlite").decide([s["path"].iloc[0]], "keep", s["given_label"].iloc[0])
    r = engine("finetune", run, "--epochs", "1", "--set", "finetune.head_epochs=2", "--set", "finetune.full_epochs=1",
               "--set", "finetune.check_share=0", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    check = json.loads((run / "checkpoints" / "finetune.json").read_text())["check"]
    assert check["kept"] is True and check["enabled"] is False
    with np.load(run / "predictions_phase_a.npz") as a, np.load(run / "predictions.npz") as b:
        assert not np.array_equal(a["features"], b["features"])
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip().endswith("}")]
    assert [e["kept"] for e in events if e.get("kind") == "finetune_check"][-1] is True


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    """kill -9 in the middle of pre-training, then --resume: the result equals an uninterrupted run."""
    from conftest import write_pattern_folder

    data = write_pattern_folder(tmp_path / "data")
    args = ["--device", "cpu", "--pretrain-epochs", "6", "--epochs", "2", "--batch-size", "8", "--image-size", "16",
            "--seed", "5", "--quiet"]
    straight = engine("fit", data, "--run-dir", tmp_path / "straight", *args)
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run), *args], cwd=ROOT,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "pretrain.last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "pre-training never wrote an epoch checkpoint"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "checkpoints" / "pretrain.pt").exists()  # really interrupted mid-stage

    resumed = engine("fit", data, "--run-dir", run, "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.strip().endswith("}")]
    pre = [e["epoch"] for e in events if e.get("kind") == "epoch" and e["stage"] == "pretrain"]
    # Each epoch trained once and logged once, none repeated: an event a kill lost between the epoch's
    # checkpoint and its event is logged by the resumed stage (engine.train.loop).
    assert pre == [1, 2, 3, 4, 5, 6]
    a = pd.read_csv(tmp_path / "straight" / "samples.csv")
    b = pd.read_csv(run / "samples.csv")
    pd.testing.assert_frame_equal(a, b)  # CPU runs are deterministic, across a kill too


def test_finetune_needs_a_finished_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert cli_main(["finetune", str(run)]) == 2
    assert "not a fitted run" in capsys.readouterr().err


def test_one_worker_per_run(tmp_path: Path) -> None:
    from engine.runs.rundir import RunDir
    from engine.runs.worker_lock import acquire as _lock_run

    run = RunDir(tmp_path)
    first = _lock_run(run)
    assert first is not None and _lock_run(run) is None
    first.close()
    again = _lock_run(run)
    assert again is not None
    again.close()


def test_a_refused_fit_leaves_the_run_as_it_was(fitted, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import write_pattern_folder

    data, run, _ = fitted
    before = {n: (run / n).read_bytes() for n in ("source.json", "config.json", "status.json")}
    other = write_pattern_folder(tmp_path / "other")
    assert cli_main(["fit", str(other), "--run-dir", str(run), *TINY]) == 2
    assert "holds a run on" in capsys.readouterr().err
    bad_test = tmp_path / "test"
    (bad_test / "zebra").mkdir(parents=True)
    shutil.copy(next(data.rglob("*.png")), bad_test / "zebra" / "z.png")
    assert cli_main(["fit", str(data), "--run-dir", str(run), *TINY, "--test", str(bad_test)]) == 2
    assert "zebra" in capsys.readouterr().err
    assert (run / "source.json").read_bytes() == before["source.json"]  # the rejected --test did not stick
    assert (run / "config.json").read_bytes() == before["config.json"]


def test_run_and_data_folders_may_not_nest(fitted, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, _, _ = fitted
    assert cli_main(["fit", str(data), "--run-dir", str(data / "run"), *TINY]) == 2
    assert "is inside the data folder" in capsys.readouterr().err and not (data / "run").exists()
    assert cli_main(["fit", str(data), "--run-dir", str(data.parent), *TINY]) == 2
    assert "is inside the run folder" in capsys.readouterr().err


def test_finetune_on_a_missing_gpu_is_refused_before_the_run_changes(fitted, monkeypatch, capsys) -> None:
    _, run, _ = fitted
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    names = ("status.json", "config.json", "config_finetune.json")
    before = {n: (run / n).read_bytes() if (run / n).exists() else None for n in names}
    assert cli_main(["finetune", str(run), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert {n: (run / n).read_bytes() if (run / n).exists() else None for n in names} == before


def test_flags_left_out_keep_the_runs_settings(fitted) -> None:
    from engine.cli import build_parser
    from engine.cli.run import _resolve_config
    from engine.runs.rundir import RunDir

    data, run, _ = fitted
    args = build_parser().parse_args(["fit", str(data), "--run-dir", str(run), "--finetune"])
    cfg = _resolve_config(args, RunDir(run))  # the run has 3 epochs, 16 px: no flag repeats them
    assert cfg.classify.epochs == 3 and cfg.data.image_size == 16 and cfg.finetune_after_fit


@pytest.mark.slow
def test_diverged_training_fails_instead_of_reporting_nonsense(tmp_path: Path, capsys) -> None:
    from conftest import write_pattern_folder

    data = write_pattern_folder(tmp_path / "data")
    code = cli_main(["fit", str(data), "--run-dir", str(tmp_path / "run"), *TINY, "--no-pretrain",
                     "--set", "classify.lr=1e30", "--set", "classify.grad_clip=0", "--set", "embed.enabled=false"])
    assert code == 2 and "training diverged" in capsys.readouterr().err
    assert not (tmp_path / "run" / "samples.csv").exists()


@pytest.mark.slow
def test_a_zipped_test_set_is_extracted_inside_the_run(fitted, tmp_path: Path) -> None:
    import tempfile
    import zipfile

    data, run, _ = fitted
    archive = tmp_path / "test.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(data.rglob("*.png"))[:6]:
            z.write(p, "test/" + p.relative_to(data).as_posix())
    before = set(Path(tempfile.gettempdir()).glob("clean-zip-*"))
    r = engine("fit", data, "--run-dir", run, *TINY, "--test", archive)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test accuracy" in r.stdout and (run / "test_source").is_dir()
    assert set(Path(tempfile.gettempdir()).glob("clean-zip-*")) == before  # nothing left in /tmp



def test_without_decisions_phase_b_waits(fitted, tmp_path: Path) -> None:
    """Phase (b) without review decisions was measured to make labels worse: `finetune` refuses (exit 2,
    nothing changed), `fit --finetune` stops after phase (a) and says why; the setting lifts the rule."""
    import shutil

    data, fitted_run, _ = fitted
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    (run / "decisions.sqlite").unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = engine("finetune", run, "--quiet")
    assert r.returncode == 2 and "fine-tuning waits for review decisions" in r.stderr
    assert "finetune.require_decisions=false" in r.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in before
            and p.name not in ("status.json", "events.jsonl", "worker.log")} == \
        {k: v for k, v in before.items() if k not in ("status.json", "events.jsonl", "worker.log")}
    r = engine("fit", data, "--run-dir", run, "--finetune", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--finetune: fine-tuning waits for review decisions" in r.stderr + r.stdout
    assert (run / "samples.csv").read_bytes() == before["samples.csv"]  # phase (b) did not run
    assert (run / "metrics.json").read_bytes() == before["metrics.json"]
