"""The network of the method: ResNet encoder, SimCLR projection head, classifier head.

Shapes follow the paper's published code (Ciortan et al. 2021): the encoder (ResNet-18 by default; 34 or 50
with `model.arch`) gives pooled features h (512-d, or 2048-d for ResNet-50); the projection head maps h to a
128-d unit vector z (used by NT-Xent and weighted SupCon); the classifier (the paper's "multilayer" head)
maps h to C logits. Weights are never downloaded: every network starts from random initialisation, or
from a file the user has (`fit --weights`, engine.train.weights).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50

from engine.config import ModelConfig

FEATURE_DIM = 512  # ResNet-18 pooled features
TRUNKS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
STEMS: tuple[str, ...] = ("auto", "small", "standard")
# A light encoder for CPUs: four 3x3 conv blocks at full resolution (no stem that quarters the image),
# about a quarter of ResNet-18's FLOPs at 32 px through the standard stem. The stem setting does not apply.
SMALL_CNN = "small-cnn"
SMALL_CNN_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
SMALL_STEM_MAX_SIZE = 64


def resolve_stem(stem: str, image_size: int, device_type: str) -> Literal["small", "standard"]:
    """Pick the concrete stem for "auto"; explicit choices pass through.

    "auto" is "small" (3x3 stride-1 conv, no max-pool: the CIFAR stem, which keeps small images from
    shrinking to 8x8 after the stem) for images <= 64 px on a GPU, and "standard" otherwise: on a CPU
    the small stem costs ~16x the FLOPs (four times the spatial size in both directions).
    """
    if stem == "auto":
        return "small" if image_size <= SMALL_STEM_MAX_SIZE and device_type == "cuda" else "standard"
    if stem in ("small", "standard"):
        return stem  # type: ignore[return-value]
    raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")


def small_cnn_trunk() -> nn.Sequential:
    """(B, 3, H, W) -> (B, SMALL_CNN_CHANNELS[-1]): 3x3 conv-BN-ReLU + 2x2 max-pool per block, global
    average pooling (any input size)."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in SMALL_CNN_CHANNELS:
        # ceil_mode: an odd or 1-pixel map still pools to at least one pixel, so every size fit takes (8 px
        # and up) works; even sizes pool exactly as without it.
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2, ceil_mode=True)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Encoder(nn.Module):
    """torchvision ResNet trunk (ResNet-18 by default) without its fc layer.

    Shape: (B, 3, H, W) -> (B, feature_dim): 512 for ResNet-18/34, 2048 for ResNet-50.
    """

    def __init__(self, stem: Literal["small", "standard"] = "standard", arch: str = "resnet18") -> None:
        super().__init__()
        if stem not in ("small", "standard"):
            raise ValueError(f"encoder stem must be small or standard, got {stem!r}")
        if arch not in (*TRUNKS, SMALL_CNN):
            raise ValueError(f"encoder arch must be one of {', '.join((*TRUNKS, SMALL_CNN))}, got {arch!r}")
        self.stem, self.arch = stem, arch
        if arch == SMALL_CNN:
            self.feature_dim = SMALL_CNN_CHANNELS[-1]
            self.trunk = small_cnn_trunk()
            return
        trunk: ResNet = TRUNKS[arch](weights=None)
        self.feature_dim = int(trunk.fc.in_features)
        if stem == "small":
            trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            # same initialisation torchvision gives its own convolutions (nn.Conv2d's default differs)
            nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
            trunk.maxpool = nn.Identity()
        trunk.fc = nn.Identity()
        self.trunk = trunk

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(x)


class ProjectionHead(nn.Module):
    """SimCLR projection g(h): Linear -> ReLU -> Linear, L2-normalised.

    Shape: (B, in_dim) -> (B, out_dim) with unit rows.
    """

    def __init__(self, in_dim: int = FEATURE_DIM, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h), dim=1)


class ClassifierHead(nn.Module):
    """The paper's "multilayer" classifier: Linear -> BatchNorm1d -> ReLU -> Linear.

    Shape: (B, in_dim) -> (B, num_classes) logits.
    """

    def __init__(self, num_classes: int, in_dim: int = FEATURE_DIM, hidden_dim: int = 128) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class Network(nn.Module):
    """Encoder f, projection head g and classifier head c sharing the features h = f(x).

    ``features(x)`` -> h (B, feature_dim); ``project(x)`` -> z = g(h) (B, proj_dim), unit rows;
    ``forward(x)`` -> c(h) logits (B, C).
    """

    def __init__(self, encoder: Encoder, projector: ProjectionHead, classifier: ClassifierHead) -> None:
        super().__init__()
        self.encoder, self.projector, self.classifier = encoder, projector, classifier

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def project(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))

    def new_classifier(self, num_classes: int) -> ClassifierHead:
        """Replace the classifier with a freshly initialised one (same hidden width, device and dtype)."""
        old = self.classifier.net[0]
        head = ClassifierHead(num_classes, in_dim=old.in_features, hidden_dim=old.out_features)
        self.classifier = head.to(device=old.weight.device, dtype=old.weight.dtype)
        return self.classifier


def build_network(cfg: ModelConfig, *, image_size: int, num_classes: int, device_type: str) -> Network:
    """Build the network on the CPU (the caller moves it); the stem is resolved for the image size and device.

    Args:
        cfg: encoder (arch, stem) and head widths.
        image_size: side of the (square) input images in pixels.
        num_classes: C of the classifier head.
        device_type: "cpu" or "cuda", for the "auto" stem.
    """
    stem = resolve_stem(cfg.stem, image_size, device_type)
    encoder = Encoder(stem, cfg.arch)
    return Network(
        encoder,
        ProjectionHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim),
        ClassifierHead(num_classes, encoder.feature_dim, cfg.head_hidden),
    )


def set_trainable(net: Network, *, encoder: bool, projector: bool, classifier: bool) -> None:
    """Set requires_grad per part: warm-up trains the classifier only; full training the encoder and
    classifier with the projection head frozen (the paper's phases).

    Only gradients are switched: BatchNorm running statistics still update in train mode, so put a
    frozen part in eval() as well if its statistics must not move.
    """
    for part, flag in ((net.encoder, encoder), (net.projector, projector), (net.classifier, classifier)):
        for p in part.parameters():
            p.requires_grad_(flag)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
