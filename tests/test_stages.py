"""The stage table: one rule for "done", named seed streams that never share a seed, the README in step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.runs import stages
from engine.runs.rundir import RunDir
from engine.runs.seeds import stream_seed

ROOT = Path(__file__).resolve().parents[1]


def test_the_phases_hold_the_stages_in_order() -> None:
    assert stages.phase_stage_names(stages.FIT) == ("prepare", "pretrain", "warmup", "train", "predict", "split",
                                                    "embed")
    assert stages.phase_stage_names(stages.FINETUNE) == ("supcon", "head", "refresh")
    assert len({s.name for s in stages.STAGES}) == len(stages.STAGES)


@pytest.mark.parametrize("run_seed", [*range(200), 2**31 - 1, 2**32 - 1])
def test_no_two_seed_streams_of_a_run_share_a_seed(run_seed: int) -> None:
    streams = stages.all_seed_streams()
    assert len(set(streams)) == len(streams)
    seeds = [stream_seed(run_seed, name) for name in streams]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**32 for s in seeds)


def test_seeds_depend_on_the_run_seed_and_nothing_else() -> None:
    assert stream_seed(3, "train/order") == stream_seed(3, "train/order")
    assert stream_seed(3, "train/order") != stream_seed(4, "train/order")
    # the old scheme's collision: pre-training's augmentation seed was the warm-up's batch-order seed
    assert stream_seed(3, "pretrain/augment") != stream_seed(3, "warmup/order")


def test_an_epoch_loop_draws_from_its_declared_streams() -> None:
    import torch

    from engine.train.loop import Rng

    rng = Rng.for_stream(7, "head/full", torch.device("cpu"))
    assert rng.order.initial_seed() == stream_seed(7, "head/full/order")
    assert rng.augment.initial_seed() == stream_seed(7, "head/full/augment")


def _string_calls(source: Path, method: str) -> list[str]:
    """The string arguments of every `<something>.<method>("...")` call in a file."""
    out = []
    for node in ast.walk(ast.parse(source.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append(node.args[0].value)
    return out


def test_the_pipeline_seeds_only_from_streams_the_table_declares() -> None:
    declared = set(stages.all_seed_streams())
    pipeline = ROOT / "engine" / "train" / "pipeline.py"
    used = set(_string_calls(pipeline, "seed"))
    for stream in _string_calls(pipeline, "rng"):
        used |= {f"{stream}/order", f"{stream}/augment"}
    assert used and used <= declared, sorted(used - declared)
    assert "stream_seed(cfg.seed, stages.PHASE_SEEDS[FIT])" in pipeline.read_text()
    # every declared stream is drawn from (a stage cannot declare a stream and quietly use another)
    assert declared - used == set(stages.PHASE_SEEDS.values())


def test_every_stage_is_run_through_the_one_rule() -> None:
    pipeline = ROOT / "engine" / "train" / "pipeline.py"
    runs = {node.args[1].value for node in ast.walk(ast.parse(pipeline.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_runs"}
    assert runs == {s.name for s in stages.STAGES} - {"prepare"}  # prepare runs before the context exists
    assert 'stages.is_done(run, "prepare")' in pipeline.read_text()


def test_done_means_recorded_and_every_file_there(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError, match="split is not done: .*samples.csv"):
        stages.mark_done(run, "split")  # a stage records itself only once its files exist
    assert not stages.is_done(run, "split")
    run.samples.parent.mkdir(parents=True)
    run.samples.write_text("index\n")
    assert not stages.is_done(run, "split")  # files alone are not enough: the stage may have been killed
    run.split.write_text("{}")
    with pytest.raises(RuntimeError, match="split is not done: .*neighbours.npy"):
        stages.mark_done(run, "split")  # the review cards' nearest images are part of the split
    run.neighbours.write_bytes(b"")
    stages.mark_done(run, "split")
    assert stages.is_done(run, "split") and run.completed_stages() == ["split"]
    run.split.unlink()
    assert not stages.is_done(run, "split")  # recorded, but its output is gone


def test_invalidating_forgets_the_resume_points_and_keeps_the_outputs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    head = stages.stage("head")
    for p in (*head.resume(run), *head.writes(run)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    stages.mark_done(run, "head")
    stages.invalidate(run, ["head"])
    assert not stages.is_done(run, "head")
    assert not any(p.exists() for p in head.resume(run))
    assert all(p.exists() for p in head.writes(run))  # shown by the app until the stage replaces them
    assert [p.name for p in head.resume(run)] == ["head.last.pt", "head_full.last.pt"]  # the head's two parts


def test_stage_states_before_a_phase(tmp_path: Path) -> None:
    from dataclasses import replace

    from engine.config import RunConfig

    run = RunDir(tmp_path / "run")
    cfg = RunConfig()
    off = replace(cfg, pretrain=replace(cfg.pretrain, enabled=False), embed=replace(cfg.embed, enabled=False))
    assert [stages.state_of(run, off, n) for n in stages.phase_stage_names(stages.FIT)] == [
        "waiting", "skipped", "skipped", "waiting", "waiting", "waiting", "skipped"]
    assert stages.stage("pretrain").off(off) == "pre-training is off (--no-pretrain)"
    assert stages.stage("train").off(off) is None


def test_the_readme_shows_the_table() -> None:
    assert stages.markdown_table() in (ROOT / "README.md").read_text()
