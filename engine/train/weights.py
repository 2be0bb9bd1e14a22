"""Start the encoder from weights the user already has (`fit --weights PATH`, config `model.weights`).

Two kinds of file are read, both with `torch.load(weights_only=True)` (tensors only, nothing executed)
and never downloaded:

* a torchvision ResNet-18/34/50 state dict, as saved from torchvision's download page (keys such as
  `conv1.weight`, `layer1.0.conv1.weight`, `fc.weight`): the trunk is loaded, the ImageNet `fc` dropped;
* a CLeaN checkpoint (RUN/checkpoints/*.pt): its `net` entry; the encoder is loaded, and the SimCLR
  projection head too when it fits (the classifier head is for other classes and is left out).
  A dict with a `state_dict` or `model` entry and keys prefixed `module.` (DataParallel) are unwrapped.

The encoder must be the one the file holds: `model.arch` names it (resnet18 by default), and the stem
follows the file (torchvision's files have the standard 7x7 stem; a CLeaN checkpoint either stem), so
`model.stem=auto` takes the file's and an explicit other stem is refused. Every mismatch is one sentence
that names the keys or shapes that differ (a UserError: exit 2), found when the run starts, before its
folder is written.

`resolve` records the file's absolute path and sha256 in the run's config (config.json); `load_into`
checks the sha256 again when the weights are loaded, so a resumed run loads the same file or refuses.
The weights are loaded into a new network only when no stage that trains the encoder has finished:
once pretrain, warmup or train is done, the run continues from its own checkpoints.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from engine.config import ARCHS, ModelConfig, RunConfig
from engine.errors import UserError
from engine.filekind import require_regular_file
from engine.method.models import SMALL_CNN, Encoder, Network
from engine.review.hashes import sha256_file
from engine.runs import stages
from engine.runs.rundir import RunDir

WRAPPERS = ("net", "state_dict", "model")  # where checkpoints keep their state dict (CLeaN's is "net")
_HINT = "a .pt/.pth file with a torchvision ResNet state dict or a CLeaN checkpoint"
# (bottleneck blocks?, blocks in layer3) -> torchvision's name for it
_ARCH_OF = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50", (True, 23): "resnet101",
            (True, 36): "resnet152"}
_SHOWN = 3  # keys named per kind of difference


class WeightsError(UserError):
    """A weights file that cannot start this run's encoder."""


@dataclass(frozen=True)
class Weights:
    """The encoder (and projection head) of a weights file, with keys as this project's modules name them."""

    encoder: dict[str, Tensor]  # Encoder.state_dict() keys: trunk.conv1.weight, ...
    projector: dict[str, Tensor] | None  # ProjectionHead.state_dict() keys, from a CLeaN checkpoint
    kind: str  # "torchvision", "CLeaN checkpoint" or "encoder"
    arch: str | None  # what its blocks say it is (resnet18, ...), None when they match no ResNet
    stem: str | None  # "standard" (7x7 conv1) or "small" (3x3), None when conv1 is neither


# ----------------------------------------------------------------------------- reading


def read_state(path: Path) -> dict[str, Tensor]:
    """The state dict in `path`: unwrapped from a checkpoint, `module.` prefixes removed."""
    require_regular_file(path, "weights file", _HINT)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"weights file {path} is not a state dict that torch.load(weights_only=True) can "
                           f"read ({reason[:200]}); give {_HINT}") from None
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"weights file {path} holds no state dict (a dict of named tensors); give {_HINT}")
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"weights file {path} holds no tensors; give {_HINT}")
    return tensors


def encoder_part(state: dict[str, Tensor], path: Path) -> Weights:
    """The encoder in a state dict: a CLeaN network's `encoder.*`, a bare encoder's `trunk.*`, or a
    torchvision ResNet's top-level keys (its `fc.*` dropped)."""
    if any(k.startswith("encoder.trunk.") for k in state):
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        projector = {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
        return _described(encoder, projector or None, "CLeaN checkpoint")
    if any(k.startswith("trunk.") for k in state):
        return _described({k: v for k, v in state.items() if k.startswith("trunk.")}, None, "encoder")
    if "conv1.weight" in state:
        return _described({f"trunk.{k}": v for k, v in state.items() if not k.startswith("fc.")}, None,
                          "torchvision")
    first = ", ".join(sorted(state)[:_SHOWN])
    raise WeightsError(f"weights file {path} holds no ResNet encoder (no conv1.weight and no encoder.* keys; "
                       f"its first keys are {first}); give {_HINT}")


def _described(encoder: dict[str, Tensor], projector: dict[str, Tensor] | None, kind: str) -> Weights:
    conv1 = encoder.get("trunk.conv1.weight")
    stem = None
    if conv1 is not None and conv1.ndim == 4:
        stem = {7: "standard", 3: "small"}.get(int(conv1.shape[-1]))
    bottleneck = "trunk.layer1.0.conv3.weight" in encoder
    blocks = {k.split(".")[2] for k in encoder if k.startswith("trunk.layer3.")}
    return Weights(encoder, projector, kind, _ARCH_OF.get((bottleneck, len(blocks))), stem)


def differences(found: dict[str, Tensor], wanted: dict[str, Tensor]) -> list[str]:
    """What keeps `found` from loading into a module whose state dict is `wanted`, in words."""
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    shapes = [k for k in sorted(set(found) & set(wanted)) if tuple(found[k].shape) != tuple(wanted[k].shape)]

    def named(keys: list[str]) -> str:
        more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
        return ", ".join(k.removeprefix("trunk.") for k in keys[:_SHOWN]) + more

    out = []
    if missing:
        out.append(f"{len(missing)} key(s) missing ({named(missing)})")
    if extra:
        out.append(f"{len(extra)} unexpected key(s) ({named(extra)})")
    for k in shapes[:_SHOWN]:
        out.append(f"{k.removeprefix('trunk.')} is {_shape(found[k])} in the file but {_shape(wanted[k])} here")
    if len(shapes) > _SHOWN:
        out.append(f"{len(shapes) - _SHOWN} more shapes differ")
    return out


def _shape(t: Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "a scalar"


# ----------------------------------------------------------------------------- the run's config


def resolve(cfg: RunConfig) -> RunConfig:
    """A new run's config with its weights file pinned: absolute path, sha256, the file's stem; refuses a
    file whose encoder is not the one `model.arch` and `model.stem` build. No weights: `cfg` unchanged."""
    m = cfg.model
    if not m.weights:
        return cfg
    path = Path(m.weights).expanduser().resolve()
    sha = _checked_sha(path, m.weights_sha256)
    found = encoder_part(read_state(path), path)
    if found.arch in ARCHS and m.arch == SMALL_CNN:
        # The CPU profile's light encoder cannot hold a ResNet's weights: the file names the encoder.
        m = replace(m, arch=found.arch)
    if found.arch is not None and found.arch != m.arch:
        fix = (f"add --set model.arch={found.arch}" if found.arch in ARCHS
               else f"CLeaN builds {', '.join(ARCHS)}")
        raise WeightsError(f"weights file {path} holds a {found.arch} encoder but the run builds a {m.arch}; {fix}")
    stem = found.stem or ("standard" if m.stem == "auto" else m.stem)
    if m.stem not in ("auto", stem):
        conv1 = _shape(found.encoder["trunk.conv1.weight"])
        raise WeightsError(f"weights file {path} has the {stem} stem (conv1.weight {conv1}) but model.stem is "
                           f"{m.stem}; leave model.stem at auto or set it to {stem}")
    wanted = Encoder(stem, m.arch).state_dict()  # type: ignore[arg-type]
    problems = differences(found.encoder, wanted)
    if problems:
        raise WeightsError(f"weights file {path} does not fit the {m.arch} encoder ({stem} stem): "
                           + "; ".join(problems))
    return replace(cfg, model=replace(m, weights=str(path), weights_sha256=sha, stem=stem))


def _checked_sha(path: Path, recorded: str) -> str:
    require_regular_file(path, "weights file", _HINT)
    sha = sha256_file(path)
    if recorded and sha != recorded:
        raise WeightsError(f"weights file {path} changed since this run started (its sha256 is {sha[:12]}…, the "
                           f"run recorded {recorded[:12]}…); restore that file or start a new --run-dir")
    return sha


# ----------------------------------------------------------------------------- loading


def needed(run: RunDir, cfg: RunConfig) -> bool:
    """The weights start the network: set, and no stage that trains the encoder has finished yet."""
    return bool(cfg.model.weights) and not any(stages.is_done(run, name) for name in ("pretrain", "warmup", "train"))


def load_into(net: Network, m: ModelConfig) -> str:
    """Copy the encoder (and a fitting projection head) of `m.weights` into `net`; returns what was loaded,
    for the run's log. Refuses a file whose sha256 is not the recorded one."""
    path = Path(m.weights)
    _checked_sha(path, m.weights_sha256)
    found = encoder_part(read_state(path), path)
    problems = differences(found.encoder, net.encoder.state_dict())
    if problems:
        raise WeightsError(f"weights file {path} does not fit this run's encoder: " + "; ".join(problems))
    net.encoder.load_state_dict(found.encoder)
    parts = "encoder"
    if found.projector is not None and not differences(found.projector, net.projector.state_dict()):
        net.projector.load_state_dict(found.projector)
        parts = "encoder and projection head"
    return f"{parts} from {path} ({found.kind}, {m.arch}, {len(found.encoder)} tensors)"
