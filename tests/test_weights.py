"""`fit --weights`: an encoder from a local torchvision state dict or a CLeaN checkpoint, or one clear refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18, resnet50

from engine.cli import main as cli_main
from engine.config import ModelConfig, RunConfig
from engine.method.models import build_network
from engine.train import weights
from engine.train.weights import WeightsError


def _cfg(path: Path, **model: object) -> RunConfig:
    return replace(RunConfig(), model=replace(ModelConfig(), weights=str(path), **model))


def _fresh(m: ModelConfig, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_network(m, image_size=32, num_classes=classes, device_type="cpu")


def test_a_torchvision_resnet18_state_dict_starts_the_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    cfg = weights.resolve(_cfg(path))
    assert cfg.model.stem == "standard" and len(cfg.model.weights_sha256) == 64
    assert cfg.model.weights == str(path.resolve())
    net = _fresh(cfg.model)
    note = weights.load_into(net, cfg.model)
    assert "torchvision" in note and "resnet18" in note
    assert torch.equal(net.encoder.trunk.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.encoder.trunk.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_a_resnet50_state_dict_is_refused_by_name_for_a_resnet18_run(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"holds a resnet50 encoder but the run builds a resnet18; add --set "
                                           r"model.arch=resnet50"):
        weights.resolve(_cfg(path))


def test_the_cpu_profiles_small_cnn_gives_way_to_the_resnet_a_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    cfg = weights.resolve(_cfg(path, arch="small-cnn"))
    assert cfg.model.arch == "resnet50"  # a small CNN cannot hold a ResNet's weights: the file names the encoder
    assert "resnet50" in weights.load_into(_fresh(cfg.model), cfg.model)


def test_a_small_cnn_checkpoint_starts_a_small_cnn_run(tmp_path: Path) -> None:
    m = ModelConfig(arch="small-cnn")
    torch.manual_seed(0)
    source = build_network(m, image_size=32, num_classes=4, device_type="cpu")
    path = tmp_path / "train.pt"
    torch.save({"net": source.state_dict(), "epoch": 2}, path)
    cfg = weights.resolve(_cfg(path, arch="small-cnn"))
    assert cfg.model.arch == "small-cnn"
    net = _fresh(cfg.model)
    weights.load_into(net, cfg.model)
    assert torch.equal(net.encoder.trunk[0].weight, source.encoder.trunk[0].weight)
    with pytest.raises(WeightsError, match="does not fit the resnet18 encoder"):
        weights.resolve(_cfg(path))  # a small CNN's weights into a ResNet: refused with what differs


def test_a_clean_checkpoint_loads_encoder_and_projection_head(tmp_path: Path) -> None:
    m = ModelConfig(stem="small")
    torch.manual_seed(0)
    source = build_network(m, image_size=32, num_classes=5, device_type="cpu")
    path = tmp_path / "train.pt"
    torch.save({"net": source.state_dict(), "epoch": 3}, path)
    cfg = weights.resolve(_cfg(path))  # stem auto follows the file: the 3x3 small stem
    assert cfg.model.stem == "small"
    net = _fresh(cfg.model, classes=2)  # other classes: the classifier head is not taken
    assert "encoder and projection head" in weights.load_into(net, cfg.model)
    assert torch.equal(net.encoder.trunk.conv1.weight, source.encoder.trunk.conv1.weight)
    first = next(iter(source.projector.state_dict()))
    assert torch.equal(net.projector.state_dict()[first], source.projector.state_dict()[first])


def test_a_corrupt_or_changed_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(WeightsError, match=r"weights_only=True"):
        weights.resolve(_cfg(bad))
    good = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), good)
    cfg = weights.resolve(_cfg(good))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, good)  # replaced after the run started
    with pytest.raises(WeightsError, match="changed since this run started"):
        weights.load_into(_fresh(cfg.model), cfg.model)


def test_fit_with_unusable_weights_exits_2_and_writes_no_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import write_pattern_folder

    data = write_pattern_folder(tmp_path / "data", per_class=3)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    run = tmp_path / "run"
    assert cli_main(["fit", str(data), "--run-dir", str(run), "--device", "cpu", "--weights", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and len(err.strip().splitlines()) == 1
    assert not run.exists() or not any(run.iterdir())
