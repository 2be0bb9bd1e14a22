"""The Train page's settings and the `fit` flags they turn into (no Streamlit here).

`SETTINGS` maps each widget of the form to one dotted `RunConfig` key; the widget's kind (checkbox,
number, choice) and its initial value come from the config itself, so a new config field reaches the
form with one row here. The form shows the profile `engine.config.profile_for(device)` gives on the
device the worker will use ("auto" = the detected one, as the engine resolves it), and every value it
shows is passed as `--set key=value`, so the run trains for exactly what the person saw whatever
profile the worker starts from. Only what has no config key stays a flag: `--truth`, `--finetune`.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.config import BUDGET_SIZED, RunConfig, profile_for

LOSS_NAMES = {
    "elr": "ELR — early-learning regularisation (recommended)",
    "ce": "Cross-entropy (baseline)",
    "nfl+rce": "NFL + RCE — normalised focal + reverse cross-entropy",
    "mixup-boot": "Mixup + dynamic bootstrapping (beta mixture on the losses)",
}


@dataclass(frozen=True)
class Setting:
    """One widget of the Train form and the config key it sets."""

    key: str  # dotted RunConfig key, as `fit --set` takes it
    label: str
    column: int = 0  # which of the form's three columns
    help: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    names: Mapping[str, str] | None = None  # how a choice's values read on the page
    whole: bool = False  # a float shown and stepped in whole units (seconds), not as 0.01s


DEVICE = Setting("device", "Device", help="auto = the GPU when the server has one, else the CPU")
SETTINGS: tuple[Setting, ...] = (
    Setting("classify.loss", "Loss", 0, names=LOSS_NAMES),
    Setting("pretrain.enabled", "Pre-train the encoder (SimCLR)", 0,
            help="Self-supervised pre-training makes the flags much better; off = from scratch"),
    Setting("pretrain.epochs", "Pre-training epochs", 0, minimum=1, maximum=5000),
    Setting("pretrain.batch_size", "Pre-training batch size", 0, minimum=2, maximum=8192,
            help="Images per SimCLR step (each seen in two views)"),
    Setting("classify.warmup_epochs", "Warm-up epochs", 1, minimum=0, maximum=5000,
            help="Epochs of the classifier head alone, on the frozen encoder"),
    Setting("classify.epochs", "Classifier epochs", 1, minimum=1, maximum=5000,
            help="Epochs of encoder + head with the noise-robust loss, after the warm-up"),
    Setting("classify.batch_size", "Batch size", 1, minimum=2, maximum=8192, help="Images per classifier step"),
    Setting("data.image_size", "Image size (px, 0 = auto)", 2, minimum=0, maximum=512,
            help="Every image is resized to this square size once, before training. 0 = auto: from the images "
                 "and the device (32 px on a CPU, where it was measured best; up to 96 px on a GPU; never "
                 "enlarged beyond the images' own size above 32 px). The run shows the size it chose"),
    Setting("seed", "Seed", 2, minimum=0, maximum=2**31 - 1),
    Setting("budget_s", "Time budget (s)", 2, minimum=0, maximum=7 * 24 * 3600, whole=True,
            help="Seconds phase (a) may take: the pre-training and classifier epochs are sized from this "
                 "machine's measured speed to fill it (0 = no budget, the epochs above as given)"),
    Setting("time_limit_s", "Time limit (s)", 2, minimum=-1, maximum=7 * 24 * 3600, whole=True,
            help="Without a budget: the most seconds phase (a) may take. Epochs left at the profile's values are "
                 "shrunk when this machine would need longer for them. -1 = auto (2.5 min up to 2,000 images, "
                 "rising to 10 min at 5,000; from 2,000 images on a fast machine also grows the pre-training to fill about "
                 "90 % of it), 0 = no limit. Epochs you change are kept"),
    Setting("review.memory", "Use the decisions remembered for these images", 2,
            help="Images decided in earlier runs (the same file content, even renamed or moved) start as reviewed "
                 "with that decision; off = `fit --no-memory`"),
    Setting("model.weights", "Encoder weights (optional)", 2,
            help="Path on this server of a torchvision ResNet-18/34/50 state dict or a CLeaN checkpoint "
                 "(RUN/checkpoints/*.pt) to start the encoder from; read from disk, never downloaded. "
                 "Empty = random initialisation (`fit --weights`). With weights, turning pre-training off gives "
                 "its time to the classifier: measured better than continuing SimCLR from them"),
)


# ----------------------------------------------------------------------------- the config behind a setting


def kind_of(key: str) -> type | tuple[str, ...]:
    """bool, int, float or str, or the allowed values of a choice, of the RunConfig field `key`."""
    hint: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(hint):
            raise KeyError(f"unknown config key: {key}")
        hints = typing.get_type_hints(hint)
        if part not in hints:
            raise KeyError(f"unknown config key: {key}")
        hint = hints[part]
    if typing.get_origin(hint) is Literal:
        return tuple(str(v) for v in typing.get_args(hint))
    if hint in (bool, int, float, str):
        return hint
    raise KeyError(f"config key {key} is not a single value a form can show")


def value_of(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def engine_device(device: str, detected_default: str) -> str:
    """The device whose profile the engine starts from: the chosen one, or the detected one for "auto"."""
    return detected_default if device == "auto" else device


def initial_values(device: str, detected_default: str) -> dict[str, Any]:
    """The form's values before any edit: the profile of the device the run will use, device as chosen."""
    cfg = profile_for(engine_device(device, detected_default))
    return {s.key: value_of(cfg, s.key) for s in SETTINGS} | {DEVICE.key: device}


# ----------------------------------------------------------------------------- flags


def set_value_text(value: Any) -> str:
    """`value` written so that `fit --set` reads it back as the same value (engine.cli.run._parse_sets)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value  # a bare word such as elr, nfl+rce or cpu
        return repr(value)  # a text that looks like a number stays a text
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def fit_flags(values: Mapping[str, Any], *, truth: str | None = None, finetune: bool = False,
              profile: RunConfig | None = None) -> list[str]:
    """`fit` flags for the form's values: one `--set key=value` each, then `--truth` and `--finetune`.

    With a time budget the epochs are the budget's to size: the form's epoch values are not sent. With a
    time limit, epochs left at `profile`'s values are not sent either, so the engine may shrink them to the
    limit; an epoch count typed into the form is sent, and kept.
    """
    flags: list[str] = []
    budgeted = float(values.get("budget_s") or 0) > 0
    limited = profile is not None and float(values.get("time_limit_s") or 0) != 0
    for key, value in values.items():
        if key in BUDGET_SIZED and (budgeted or (limited and value == value_of(profile, key))):
            continue
        flags += ["--set", f"{key}={set_value_text(value)}"]
    if truth:
        flags += ["--truth", str(Path(truth).expanduser())]
    if finetune:
        flags.append("--finetune")
    return flags


def launched_settings(command: Sequence[str]) -> dict[str, Any]:
    """The config keys a `fit` command line sets (flags and `--set`), read with the engine's own parser.

    For a run whose worker has not written config.json yet: the app's launch.json records the command.
    """
    from engine.cli import build_parser
    from engine.cli.run import fit_overrides

    words = list(command)
    if "fit" not in words:
        return {}
    try:
        args = build_parser().parse_args(words[words.index("fit"):])
        return fit_overrides(args)
    except (SystemExit, ValueError):  # argparse exits on a command it cannot read
        return {}


def check_truth(text: str) -> tuple[str | None, str | None]:
    """(path, error) for the optional truth-file field; an empty field is fine."""
    text = text.strip()
    if not text:
        return None, None
    path = Path(text).expanduser()
    if not path.is_file():
        return None, f"truth file {text} does not exist"
    if path.suffix.lower() != ".csv":
        return None, f"truth file {text} is not a .csv (columns path,true_label)"
    return str(path.resolve()), None


def check_weights(text: str) -> tuple[str, str | None]:
    """(absolute path or "", error) for the encoder-weights field; an empty field is fine. Only that the
    file is there: whether it fits the encoder the worker checks when the run starts (a one-sentence error)."""
    text = str(text).strip()
    if not text:
        return "", None
    path = Path(text).expanduser()
    if not path.is_file():
        return "", f"weights file {text} does not exist on this server"
    return str(path.resolve()), None
