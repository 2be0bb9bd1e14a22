"""Only UserError means bad input (exit 2); any other exception, a plain ValueError included, is a bug (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import config as config_mod
from engine.cli import main as cli_main
from engine.errors import UserError


@pytest.mark.parametrize("overrides", [{"seed": -1}, {"classify.loss": "mse"}, {"pretrain.epoch": 3},
                                       {"pretrain.epochs": "many"}, {"augment.crop_scale": [0.5]}])
def test_bad_settings_are_user_errors(overrides: dict) -> None:
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.with_overrides(config_mod.RunConfig(), overrides)
    assert isinstance(caught.value, UserError)


def test_an_unreadable_config_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"seed": "x"}')
    with pytest.raises(UserError, match="c.json: seed must be an integer"):
        config_mod.load(tmp_path / "c.json")


def test_noise_and_decisions_report_user_mistakes_as_user_errors(tmp_path: Path) -> None:
    from engine.data.noise import inject_noise, mapping_by_name
    from engine.review.decisions import DecisionStore

    with pytest.raises(UserError, match="noise rate must be in"):
        inject_noise(np.array([0, 1]), classes=("a", "b"), kind="symmetric", rate=1.5, seed=0)
    with pytest.raises(UserError, match="names classes this data set lacks"):
        mapping_by_name({"cat": "emu"}, ("cat", "dog"))
    with pytest.raises(UserError, match="needs a label"):
        DecisionStore(tmp_path / "d.sqlite").decide(["a.png"], "relabel")


def test_a_missing_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from engine.train.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_a_plain_value_error_in_a_command_is_a_bug(monkeypatch, capsys) -> None:
    from engine.cli import run as handlers

    def broken(args):
        raise ValueError("shapes do not match")

    monkeypatch.setattr(handlers, "cmd_status", broken)
    assert cli_main(["status", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "error: ValueError: shapes do not match" in err and "please report this" in err


def test_a_user_error_in_a_command_is_bad_input(monkeypatch, capsys) -> None:
    from engine.cli import run as handlers

    def refuses(args):
        raise UserError("that run folder is someone else's")

    monkeypatch.setattr(handlers, "cmd_status", refuses)
    assert cli_main(["status", "anywhere"]) == 2
    assert capsys.readouterr().err == "error: that run folder is someone else's\n"


def test_a_bug_inside_the_worker_fails_the_run_with_exit_1(tmp_path: Path, monkeypatch, capsys,
                                                          make_image_folder) -> None:
    from engine.cli import run as handlers

    data = make_image_folder(tmp_path / "data")

    def broken(*_: object) -> None:
        raise ValueError("index 7 is out of bounds")

    monkeypatch.setattr(handlers, "_fit", broken)
    code = cli_main(["fit", str(data), "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "please report this" in err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "ValueError: index 7 is out of bounds" in status["error"]
    assert "please report this" in status["error"]


def test_bad_settings_on_the_command_line_still_exit_2(tmp_path: Path, make_image_folder, capsys) -> None:
    data = make_image_folder(tmp_path / "data")
    code = cli_main(["fit", str(data), "--run-dir", str(tmp_path / "run"), "--set", "split.threshold=2", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == "error: flag threshold must be in (0, 1), got 2.0\n"
    assert not (tmp_path / "run").exists()
