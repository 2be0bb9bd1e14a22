"""Network shapes, stems, trainable flags and checkpoint round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.config import ModelConfig
from engine.method.models import (
    ClassifierHead,
    Encoder,
    Network,
    ProjectionHead,
    build_network,
    count_parameters,
    resolve_stem,
    set_trainable,
)


def _net(stem: str = "standard", num_classes: int = 5, size: int = 16) -> Network:
    torch.manual_seed(0)
    return build_network(ModelConfig(stem=stem), image_size=size, num_classes=num_classes, device_type="cpu")


@pytest.mark.parametrize("stem", ["small", "standard"])
@pytest.mark.parametrize("size", [16, 32])
def test_output_shapes(stem: str, size: int) -> None:
    net = _net(stem, num_classes=7, size=size).eval()
    with torch.no_grad():
        h = net.features(torch.randn(2, 3, size, size))  # one encoder pass: the CPU is slow
        assert h.shape == (2, 512)
        assert net.projector(h).shape == (2, 128)
        assert net.classifier(h).shape == (2, 7)


def test_project_and_forward_share_the_encoder() -> None:
    net = _net(num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = net.features(x)
        torch.testing.assert_close(net.project(x), net.projector(h))
        torch.testing.assert_close(net(x), net.classifier(h))


def test_projection_has_unit_norm() -> None:
    net = _net().eval()
    with torch.no_grad():
        z = net.project(torch.randn(3, 3, 16, 16) * 10)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(ProjectionHead()(torch.randn(4, 512)).norm(dim=1), torch.ones(4))


def test_small_stem_is_3x3_stride_1_without_max_pool() -> None:
    small, standard = Encoder("small").trunk, Encoder("standard").trunk
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.padding == (1, 1)
    assert small.conv1.bias is None and isinstance(small.maxpool, nn.Identity)
    assert standard.conv1.kernel_size == (7, 7) and standard.conv1.stride == (2, 2)
    assert isinstance(standard.maxpool, nn.MaxPool2d)
    assert isinstance(small.fc, nn.Identity) and isinstance(standard.fc, nn.Identity)
    # the small stem keeps the full resolution after the stem
    x = torch.randn(1, 3, 16, 16)
    assert small.maxpool(small.conv1(x)).shape[-1] == 16
    assert standard.maxpool(standard.conv1(x)).shape[-1] == 4


@pytest.mark.parametrize(
    ("stem", "size", "device", "expected"),
    [
        ("auto", 32, "cuda", "small"),
        ("auto", 64, "cuda", "small"),
        ("auto", 65, "cuda", "standard"),
        ("auto", 32, "cpu", "standard"),
        ("small", 32, "cpu", "small"),
        ("small", 224, "cuda", "small"),
        ("standard", 32, "cuda", "standard"),
    ],
)
def test_resolve_stem(stem: str, size: int, device: str, expected: str) -> None:
    assert resolve_stem(stem, size, device) == expected


def test_resolve_stem_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="stem must be one of auto, small, standard, got 'tiny'"):
        resolve_stem("tiny", 32, "cpu")


def test_build_network_uses_config_widths() -> None:
    cfg = ModelConfig(stem="small", proj_hidden=64, proj_dim=32, head_hidden=16)
    net = build_network(cfg, image_size=16, num_classes=3, device_type="cpu")
    assert net.encoder.stem == "small"
    assert [m.out_features for m in net.projector.net if isinstance(m, nn.Linear)] == [64, 32]
    assert [m.out_features for m in net.classifier.net if isinstance(m, nn.Linear)] == [16, 3]
    assert isinstance(net.classifier.net[1], nn.BatchNorm1d)
    auto = build_network(ModelConfig(), image_size=32, num_classes=3, device_type="cuda")
    assert auto.encoder.stem == "small"


@pytest.mark.parametrize(
    ("flags", "trainable"),
    [
        ({"encoder": False, "projector": False, "classifier": True}, {"classifier"}),  # warm-up
        ({"encoder": True, "projector": False, "classifier": True}, {"encoder", "classifier"}),  # full training
        ({"encoder": True, "projector": True, "classifier": False}, {"encoder", "projector"}),  # SimCLR / SupCon
    ],
)
def test_set_trainable_flips_exactly_the_right_parameters(flags: dict[str, bool], trainable: set[str]) -> None:
    net = _net()
    set_trainable(net, **flags)
    for name, p in net.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in trainable), name
    expected = sum(count_parameters(getattr(net, part)) for part in trainable)
    assert count_parameters(net, trainable_only=True) == expected


def test_warm_up_step_leaves_frozen_parts_unchanged() -> None:
    net = _net()
    set_trainable(net, encoder=False, projector=False, classifier=True)
    before = {k: v.clone() for k, v in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(net(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("classifier"), name


def test_state_dict_round_trip_with_weights_only(tmp_path: Path) -> None:
    net = _net("small").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics must survive the round trip too
        net.classifier.net[1].running_mean.uniform_()
    path = tmp_path / "net.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, path)
    restored = build_network(ModelConfig(stem="small"), image_size=16, num_classes=5, device_type="cpu").eval()
    checkpoint = torch.load(path, weights_only=True)
    restored.load_state_dict(checkpoint["model"])
    for key, value in net.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), net(x))
    assert checkpoint["epoch"] == 3


def test_new_classifier_changes_width_and_resets_weights() -> None:
    net = _net(num_classes=5)
    old = net.classifier
    with torch.no_grad():
        for p in old.parameters():
            p.fill_(0.5)
    head = net.new_classifier(3)
    assert net.classifier is head and head is not old and net.num_classes == 3
    assert net.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert not torch.allclose(head.net[0].weight, torch.full_like(head.net[0].weight, 0.5))
    assert head.net[0].in_features == 512 and head.net[0].out_features == 128
    assert all(p.requires_grad for p in head.parameters())


def test_classifier_rejects_fewer_than_two_classes() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2, got 1"):
        ClassifierHead(1)


def test_the_small_cnn_encoder_gives_256_features_at_any_working_size_and_is_light() -> None:
    m = ModelConfig(arch="small-cnn")
    for size in (8, 13, 32, 96):  # down to fit's smallest size, odd sizes too
        net = build_network(m, image_size=size, num_classes=7, device_type="cpu").eval()
        x = torch.zeros(2, 3, size, size)
        assert net.features(x).shape == (2, 256) and net(x).shape == (2, 7)
        assert net.project(x).shape == (2, 128)
    resnet = build_network(ModelConfig(), image_size=32, num_classes=7, device_type="cpu")
    assert count_parameters(net.encoder) * 20 < count_parameters(resnet.encoder)  # 0.39 M against 11.2 M


def test_the_cpu_profile_builds_the_small_cnn_and_the_gpu_profile_the_papers_resnet() -> None:
    from engine.config import profile_for

    assert profile_for("cpu").model.arch == "small-cnn"
    assert profile_for("cuda").model.arch == "resnet18"
