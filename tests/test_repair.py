"""A damaged run, end to end: the command names the file and the repair and changes nothing; `--resume`
redoes exactly the stage that wrote the file and the stages that depend on it, keeps every review
decision, and (CPU runs being deterministic) ends with the result the run had before the damage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from engine.cli import main as cli_main
from engine.review.decisions import DecisionStore

pytestmark = pytest.mark.slow

ARGS = ["--device", "cpu", "--pretrain-epochs", "1", "--epochs", "2", "--batch-size", "8", "--image-size", "16",
        "--seed", "3", "--set", "embed.enabled=false", "--set", "finetune.epochs=1", "--set",
        "finetune.head_epochs=1", "--set", "finetune.full_epochs=1", "--quiet"]
GARBAGE = bytes(range(7, 251)) * 16


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data, a run after phase (a) with one review decision, and the same run after phase (b)."""
    from conftest import write_pattern_folder

    base = tmp_path_factory.mktemp("repair")
    data = write_pattern_folder(base / "data")
    fitted = base / "fitted"
    assert cli_main(["fit", str(data), "--run-dir", str(fitted), *ARGS]) == 0
    DecisionStore(fitted / "decisions.sqlite").decide(["checker/horizontal_000.png"], "relabel", "vertical")
    tuned = base / "tuned"
    shutil.copytree(fitted, tuned)
    assert cli_main(["finetune", str(tuned), "--quiet"]) == 0
    return {"data": data, "fitted": fitted, "tuned": tuned}


def copy(templates: dict[str, Path], which: str, tmp_path: Path) -> Path:
    run = tmp_path / which
    shutil.copytree(templates[which], run)
    return run


def tree(root: Path) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            out[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2] if how == "half" else GARBAGE)


def redone(run: Path) -> tuple[list[str], list[str]]:
    """(stages started, stages skipped) since the last repair."""
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    last = max(i for i, e in enumerate(events) if e.get("kind") == "repair")
    stage_events = [e for e in events[last:] if e.get("kind") == "stage"]
    started = [e["stage"] for e in stage_events if e["state"] == "start"]
    return started, [e["stage"] for e in stage_events if e["state"] == "skipped"]


def refused(argv: list[str], capsys: pytest.CaptureFixture, run: Path) -> str:
    """Run a command that must be refused with exit 2 and leave every file of the run as it was."""
    before = tree(run)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "weights_only=False" not in err
    assert tree(run) == before
    return err


def test_a_damaged_checkpoint_is_named_and_resume_redoes_only_what_depends_on_it(templates, tmp_path, capsys):
    run = copy(templates, "fitted", tmp_path)
    decisions = tree(run)["decisions.sqlite"]
    damage(run / "checkpoints" / "train.pt", "garbage")
    fit = ["fit", str(templates["data"]), "--run-dir", str(run), *ARGS]
    err = refused(fit, capsys, run)
    assert (f"checkpoints/train.pt is damaged (not a complete checkpoint archive): `python -m engine fit "
            f"{templates['data']} --run-dir {run} --resume` redoes the train stage and the stages that depend on "
            "it (predict, split); review decisions are kept") in err
    assert "train.pt" in refused(["finetune", str(run), "--quiet"], capsys, run)
    assert cli_main([*fit, "--resume"]) == 0
    started, skipped = redone(run)
    assert started == ["train", "predict", "split"] and {"prepare", "pretrain", "warmup"} <= set(skipped)
    assert tree(run)["decisions.sqlite"] == decisions
    assert (run / "samples.csv").read_bytes() == (templates["fitted"] / "samples.csv").read_bytes()
    assert cli_main(["status", str(run)]) == 0


def test_a_cache_cut_in_half_is_damage_not_other_images(templates, tmp_path, capsys):
    run = copy(templates, "fitted", tmp_path)
    damage(run / "data" / "images.npy", "half")
    fit = ["fit", str(templates["data"]), "--run-dir", str(run), *ARGS]
    err = refused(fit, capsys, run)
    assert "data/images.npy is damaged (" in err and "redoes the prepare stage" in err and "changed" not in err
    assert cli_main([*fit, "--resume"]) == 0
    started, _ = redone(run)
    assert started == ["prepare", "pretrain", "warmup", "train", "predict", "split"]
    assert (run / "samples.csv").read_bytes() == (templates["fitted"] / "samples.csv").read_bytes()
    assert (run / "decisions.sqlite").read_bytes() == (templates["fitted"] / "decisions.sqlite").read_bytes()


def test_a_damaged_fine_tuning_file_is_repaired_by_finetune(templates, tmp_path, capsys):
    run = copy(templates, "tuned", tmp_path)
    damage(run / "checkpoints" / "head.pt", "half")
    err = refused(["finetune", str(run), "--quiet"], capsys, run)
    assert f"`python -m engine finetune {run} --resume` redoes the head stage and the stages that depend on it " \
           "(refresh)" in err
    assert cli_main(["finetune", str(run), "--resume", "--quiet"]) == 0
    started, skipped = redone(run)
    assert started == ["head", "refresh"] and "supcon" in skipped
    assert (run / "samples.csv").read_bytes() == (templates["tuned"] / "samples.csv").read_bytes()
    assert (run / "decisions.sqlite").read_bytes() == (templates["tuned"] / "decisions.sqlite").read_bytes()


def test_phase_a_damage_under_a_fine_tuned_run_redoes_both_phases(templates, tmp_path, capsys):
    run = copy(templates, "tuned", tmp_path)
    damage(run / "predictions_phase_a.npz", "garbage")
    err = refused(["finetune", str(run), "--resume", "--quiet"], capsys, run)  # fine-tuning cannot redo phase (a)
    assert "predictions_phase_a.npz is damaged" in err and "fit" in err
    assert f"then `python -m engine finetune {run}` fine-tunes again" in err
    assert cli_main(["fit", str(templates["data"]), "--run-dir", str(run), *ARGS, "--resume"]) == 0
    assert redone(run)[0] == ["predict", "split"]
    status = json.loads((run / "status.json").read_text())
    assert not {"supcon", "head", "refresh"} & set(status["completed_stages"])
    assert not (run / "samples_phase_a.csv").exists()  # the snapshots are taken again by fine-tuning
    assert (run / "samples.csv").read_bytes() == (templates["fitted"] / "samples.csv").read_bytes()
    assert cli_main(["finetune", str(run), "--quiet"]) == 0
    assert (run / "samples.csv").read_bytes() == (templates["tuned"] / "samples.csv").read_bytes()
    assert (run / "samples_phase_a.csv").read_bytes() == (templates["tuned"] / "samples_phase_a.csv").read_bytes()


def test_a_damaged_status_redoes_the_stages_from_the_intact_cache(templates, tmp_path, capsys):
    run = copy(templates, "fitted", tmp_path)
    images = (run / "data" / "images.npy").stat().st_mtime_ns
    damage(run / "status.json", "garbage")
    err = refused(["status", str(run)], capsys, run)
    assert "status.json is damaged (not UTF-8 text)" in err
    assert cli_main(["fit", str(templates["data"]), "--run-dir", str(run), *ARGS, "--resume"]) == 0
    assert redone(run)[0] == ["prepare", "pretrain", "warmup", "train", "predict", "split"]
    assert (run / "data" / "images.npy").stat().st_mtime_ns == images  # not decoded again
    assert (run / "samples.csv").read_bytes() == (templates["fitted"] / "samples.csv").read_bytes()


def test_a_damaged_config_is_restored_from_the_checkpoints(templates, tmp_path, capsys):
    run = copy(templates, "fitted", tmp_path)
    damage(run / "config.json", "half")
    err = refused(["fit", str(templates["data"]), "--run-dir", str(run), "--quiet"], capsys, run)
    assert "config.json is not readable JSON" in err and "restores it from the run's checkpoints" in err
    assert cli_main(["fit", str(templates["data"]), "--run-dir", str(run), "--resume", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text()) == json.loads((templates["fitted"] / "config.json").read_text())
    assert redone(run)[0] == []  # every stage was done and stays done


def test_a_foreign_checkpoint_in_a_run_is_never_loaded_unsafely(templates, tmp_path, capsys):
    import fractions

    import torch

    run = copy(templates, "fitted", tmp_path)
    (run / "checkpoints" / "warmup.pt").unlink()
    torch.save({"net": fractions.Fraction(1, 3), "stage": "warmup"}, run / "checkpoints" / "warmup.pt")
    err = refused(["fit", str(templates["data"]), "--run-dir", str(run), *ARGS], capsys, run)
    assert "checkpoints/warmup.pt is damaged (it holds objects a CLeaN checkpoint never holds)" in err
