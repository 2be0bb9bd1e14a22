"""engine.runs.integrity: every run file cut short or overwritten is found, named with the stage that writes
it again, and repaired by redoing that stage and what depends on it; the decisions are never touched."""

from __future__ import annotations

import collections
import fractions
import hashlib
import os
import threading
from pathlib import Path

import pytest
import torch
from synthetic_run import write_run

from engine.data.cache import MISSING, cache_problem
from engine.runs import integrity, stages
from engine.runs.atomic import DamagedFile
from engine.runs.rundir import RunDir
from engine.runs.stages import FINETUNE, FIT
from engine.train.checkpoint import checkpoint_problem, load_checkpoint

GARBAGE = bytes(range(7, 251)) * 16  # not UTF-8, not a zip, not a .npy


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2] if how == "half" else GARBAGE)


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return write_run(tmp_path / "a")


@pytest.fixture
def run_b(tmp_path: Path) -> RunDir:
    return write_run(tmp_path / "b", phase_b=True)


def test_a_healthy_run_has_no_damage(run: RunDir, run_b: RunDir) -> None:
    assert integrity.find_damage(run) == []
    assert integrity.find_damage(run, checkpoint_problem=checkpoint_problem, verify=True) == []
    assert integrity.find_damage(run_b, checkpoint_problem=checkpoint_problem, verify=True) == []


# file, the stage that writes it again, the stages a fit-only run then redoes
PHASE_A = [
    ("data/images.npy", "prepare", ("prepare", "pretrain", "warmup", "train", "predict", "split", "embed")),
    ("data/manifest.csv", "prepare", ("prepare", "pretrain", "warmup", "train", "predict", "split", "embed")),
    ("data/intake.json", "prepare", ("prepare", "pretrain", "warmup", "train", "predict", "split", "embed")),
    ("checkpoints/pretrain.pt", "pretrain", ("pretrain", "warmup", "train", "predict", "split", "embed")),
    ("checkpoints/warmup.pt", "warmup", ("warmup", "train", "predict", "split", "embed")),
    ("checkpoints/train.pt", "train", ("train", "predict", "split", "embed")),
    ("checkpoints/train_losses.npz", "train", ("train", "predict", "split", "embed")),
    ("predictions.npz", "predict", ("predict", "split", "embed")),
    ("samples.csv", "split", ("split",)),
    ("split.json", "split", ("split",)),
    ("metrics.json", "split", ("split",)),
    ("umap.npy", "embed", ("embed",)),
]


@pytest.mark.parametrize("how", ["half", "garbage"])
@pytest.mark.parametrize(("name", "stage", "redone"), PHASE_A, ids=[p[0] for p in PHASE_A])
def test_each_damaged_file_is_named_with_the_stage_that_repairs_it(run: RunDir, name: str, stage: str,
                                                                 redone: tuple[str, ...], how: str) -> None:
    damage(run.path / name, how)
    found = integrity.find_damage(run, checkpoint_problem=checkpoint_problem, verify=True)
    assert [(run.relative(d.path), d.stage) for d in found] == [(name, stage)]
    plan = integrity.plan(run, found)
    assert plan.done == redone and plan.phase == FIT
    text = integrity.sentence(run, plan)
    assert text.startswith(f"{name} is damaged (") and "weights_only" not in text and "\n" not in text
    assert f"`python -m engine fit {run.path.parent / 'data'} --run-dir {run.path} --resume` redoes the {stage} " \
           "stage" in text
    assert text.endswith("review decisions are kept")


def test_the_sentence_lists_what_depends_on_the_damaged_stage(run: RunDir) -> None:
    damage(run.checkpoint("train"), "garbage")
    plan = integrity.plan(run, integrity.find_damage(run))
    assert "(not a complete checkpoint archive)" in integrity.sentence(run, plan)
    assert "redoes the train stage and the stages that depend on it (predict, split, embed)" in \
        integrity.sentence(run, plan)


def test_a_damaged_cache_is_never_taken_for_other_images(run: RunDir) -> None:
    damage(run.data / "images.npy", "half")
    name, reason = cache_problem(run.data)
    assert name == "images.npy" and "bytes where its header needs" in reason
    assert "changed" not in integrity.sentence(run, integrity.plan(run, integrity.find_damage(run)))


def test_an_interrupted_prepare_is_not_damage_but_a_finished_one_missing_its_cache_is(run: RunDir) -> None:
    (run.data / "intake.json").unlink()  # prepare removes it first and writes it last
    assert cache_problem(run.data) == ("intake.json", MISSING)
    [found] = integrity.find_damage(run)  # prepare is recorded done: its cache must be whole
    assert found.stage == "prepare"
    assert integrity.sentence(run, integrity.plan(run, [found])).startswith("data/intake.json is missing:")
    run.unmark_stages(["prepare"])
    assert integrity.find_damage(run) == []


def test_phase_b_files_are_repaired_by_finetune(run_b: RunDir) -> None:
    run = run_b
    damage(run.checkpoint("head"), "half")
    [found] = integrity.find_damage(run)
    plan = integrity.plan(run, [found])
    assert found.stage == "head" and plan.done == ("head", "refresh") and plan.phase == FINETUNE
    assert f"`python -m engine finetune {run.path} --resume` redoes the head stage and the stages that depend " \
           "on it (refresh)" in integrity.sentence(run, plan)


def test_a_file_two_stages_write_belongs_to_the_last_one_done(run_b: RunDir) -> None:
    run = run_b
    damage(run.samples, "half")  # phase (b)'s samples.csv: refresh wrote it last
    [found] = integrity.find_damage(run)
    assert found.stage == "refresh" and integrity.plan(run, [found]).done == ("refresh",)
    damage(run.samples_before, "garbage")  # phase (a)'s snapshot: split's, and refresh replaced split's files
    found = integrity.find_damage(run)
    assert [d.stage for d in found] == ["split", "refresh"]
    plan = integrity.plan(run, found)
    assert plan.done == ("split", "refresh") and plan.phase == FIT
    assert f"then `python -m engine finetune {run.path}` fine-tunes again" in integrity.sentence(run, plan)


def test_phase_a_damage_under_phase_b_undoes_both(run_b: RunDir) -> None:
    damage(run_b.checkpoint("train"), "garbage")
    plan = integrity.plan(run_b, integrity.find_damage(run_b))
    assert plan.done == ("train", "predict", "split", "embed", "supcon", "head", "refresh") and plan.fit_needed


def test_repair_undoes_the_stages_and_keeps_the_decisions(run_b: RunDir) -> None:
    run = run_b
    decisions = digest(run.decisions)
    last = run.checkpoint("supcon", last=True)
    last.write_bytes(run.checkpoint("supcon").read_bytes())  # a resume point of a stage to redo
    damage(run.predictions_before, "half")
    plan = integrity.plan(run, integrity.find_damage(run))
    assert plan.redo == ("predict", "split", "embed", "supcon", "head", "refresh")
    integrity.repair(run, plan)
    assert run.completed_stages() == ["prepare", "pretrain", "warmup", "train"]
    assert not run.predictions_before.exists() and not last.exists()
    assert not run.samples_before.exists() and not run.metrics_before.exists()  # split's snapshots too
    assert run.checkpoint("train").exists() and run.samples.exists()  # outputs stay until their stage reruns
    assert digest(run.decisions) == decisions
    assert integrity.find_damage(run) == []


def test_a_damaged_status_redoes_every_stage(run: RunDir) -> None:
    damage(run.status_file, "garbage")
    [found] = integrity.find_damage(run)
    assert found.path == run.status_file and found.reason == "not UTF-8 text"
    plan = integrity.plan(run, [found])
    assert plan.redo == tuple(s.name for s in stages.STAGES) and plan.phase == FIT
    assert "redoes the run's stages, reusing the decoded images" in integrity.sentence(run, plan)
    integrity.repair(run, plan)
    assert run.load_status()["completed_stages"] == []


def test_a_deep_or_piped_status_is_named_without_blocking(run: RunDir) -> None:
    run.status_file.write_text("[" * 200_000)
    assert integrity.find_damage(run)[0].reason == "JSON nested too deeply"
    run.status_file.unlink()
    os.mkfifo(run.status_file)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(integrity.find_damage(run)), daemon=True)
    reader.start()
    reader.join(10)
    assert result and result[0][0].reason == "a named pipe, not a regular file"


def test_a_damaged_config_is_restored_by_fit(run: RunDir) -> None:
    damage(run.config, "half")
    [found] = integrity.find_damage(run)
    assert found.path == run.config and found.stage is None
    text = integrity.sentence(run, integrity.plan(run, [found]))
    assert "config.json is not readable JSON" in text and "--resume` restores it from the run's checkpoints" in text


def test_a_map_the_settings_turn_off_is_only_removed(run: RunDir) -> None:
    from engine import config as config_mod

    cfg = config_mod.with_overrides(config_mod.load(run.config), {"embed.enabled": False})
    run.umap.write_bytes(b"\x93NUMPY garbage")
    plan = integrity.plan(run, integrity.find_damage(run), cfg)
    assert "umap.npy is damaged" in integrity.sentence(run, plan, cfg)
    assert plan.phase == FIT and integrity.sentence(run, plan, cfg).endswith(
        f"--run-dir {run.path} --resume` removes it (the embed stage is off in this run's settings)")


def test_a_short_samples_file_is_found_even_when_cut_at_a_line_end(run: RunDir) -> None:
    lines = run.samples.read_bytes().splitlines(keepends=True)
    run.samples.write_bytes(b"".join(lines[:4]))
    assert integrity.samples_problem(run.samples, 8) == "it has 3 rows for the run's 8 images"
    run.samples.write_bytes(b"".join(lines)[:-3])
    assert integrity.samples_problem(run.samples, 8) == "its last line is cut short"
    run.samples.write_bytes(b"".join(lines[:5]) + lines[5][:20])
    assert integrity.samples_problem(run.samples, 8).startswith("line 6 has 3 fields, not ")


def test_a_foreign_checkpoint_is_refused_without_torchs_advice(run: RunDir) -> None:
    path = run.checkpoint("pretrain")
    path.unlink()
    torch.save({"net": fractions.Fraction(1, 3)}, path)  # weights_only refuses it
    assert integrity.find_damage(run) == []  # an archive like any checkpoint: only loading tells
    [found] = integrity.find_damage(run, checkpoint_problem=checkpoint_problem)
    assert found.reason == "it holds objects a CLeaN checkpoint never holds"
    with pytest.raises(DamagedFile) as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value) and "pretrain.pt is damaged" in str(e.value)
    path.unlink()
    torch.save({"net": collections.OrderedDict(), "stage": "train"}, path)
    assert checkpoint_problem(path) == "it is the checkpoint of 'train', not of pretrain"


def test_a_damage_found_while_a_stage_ran_is_worded_the_same(run: RunDir) -> None:
    found = integrity.damage_of(run, run.checkpoint("warmup"), "not a readable checkpoint (RuntimeError)")
    assert found.stage == "warmup"
    assert "checkpoints/warmup.pt is damaged (not a readable checkpoint (RuntimeError))" in \
        integrity.sentence(run, integrity.plan(run, [found]))


def test_repair_commands_quote_their_paths(tmp_path: Path) -> None:
    run = write_run(tmp_path / "my runs")
    assert integrity.repair_command(run, FIT).startswith(f"python -m engine fit '{tmp_path / 'my runs' / 'data'}' "
                                                         f"--run-dir '{run.path}' --resume")
