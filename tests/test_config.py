"""The typed run config: round trip, validation and overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import config as C


def test_round_trip_through_json(tmp_path: Path) -> None:
    cfg = C.with_overrides(C.RunConfig(), {"pretrain.epochs": 3, "classify.loss": "nfl+rce", "seed": 7})
    C.save(cfg, tmp_path / "config.json")
    assert C.load(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["classify"]["loss"] == "nfl+rce"


def test_tuples_survive_json(tmp_path: Path) -> None:
    cfg = C.RunConfig()
    C.save(cfg, tmp_path / "c.json")
    assert C.load(tmp_path / "c.json").augment.crop_scale == (0.2, 1.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("classify.loss", "mse", "classify.loss must be one of"),
        ("pretrain.epochs", "five", "must be an integer"),
        ("pretrain.enabled", 1, "must be true or false"),
        ("split.threshold", 1.5, "flag threshold must be in (0, 1)"),
        ("data.image_size", 4, "image_size must be between 8 and 512"),
        ("pretrain.temperature", 0.0, "temperature must be > 0"),
        ("nope.key", 1, "unknown config key"),
        ("classify.nope", 1, "unknown config key"),
        ("seed", -1, "seed must be between 0 and 4294967295"),
        ("seed", 2**32, "seed must be between 0 and 4294967295"),
        ("augment.crop_scale", [0.5], "augment.crop_scale must be a list of 2 numbers"),
        ("augment.crop_scale", [0.1, 0.2, 0.3], "augment.crop_scale must be a list of 2 numbers"),
        ("augment.jitter", [1], "augment.jitter must be a list of 4 numbers"),
        ("augment.jitter", [0.4, 0.4, "x", 0.1], "augment.jitter must be a list of 4 numbers"),
    ],
)
def test_bad_values_name_the_problem(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        C.with_overrides(C.RunConfig(), {key: value})


def test_unknown_keys_in_a_file_are_rejected(tmp_path: Path) -> None:
    d = C.to_dict(C.RunConfig())
    d["pretrain"]["epoch"] = 3  # typo
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="pretrain.epoch"):
        C.load(tmp_path / "c.json")


def test_gpu_profile_trains_longer_with_bigger_batches() -> None:
    cpu, gpu = C.RunConfig(), C.gpu_profile(C.RunConfig())
    assert gpu.pretrain.epochs > cpu.pretrain.epochs
    assert gpu.pretrain.batch_size > cpu.pretrain.batch_size
    assert gpu.classify.loss == cpu.classify.loss == "elr"


def test_cli_set_values_parse_like_config_json() -> None:
    from engine.cli.run import _parse_sets

    assert _parse_sets(["embed.enabled=false", "pretrain.enabled=True", "pretrain.lr=0.1", "classify.loss=nfl+rce",
                        "augment.crop_scale=(0.3, 1.0)"]) == {
        "embed.enabled": False, "pretrain.enabled": True, "pretrain.lr": 0.1, "classify.loss": "nfl+rce",
        "augment.crop_scale": (0.3, 1.0)}
    cfg = C.with_overrides(C.RunConfig(), _parse_sets(["embed.enabled=false"]))
    assert cfg.embed.enabled is False


def test_unreadable_config_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"config file {tmp_path / 'missing.json'} does not exist"):
        C.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="is a folder, not a JSON file"):
        C.load(tmp_path)
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="bad.json is not readable JSON"):
        C.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: config section 'root' must be an object"):
        C.load(tmp_path / "list.json")
