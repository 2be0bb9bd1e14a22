"""The Train page's settings and the `fit` flags they turn into (no Streamlit here).

Defaults come from `engine.config.RunConfig()` (the GPU profile when a GPU is detected), and only
settings that differ from those defaults become flags, so the command the app runs is the shortest
command a person would type for the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig, gpu_profile


@dataclass(frozen=True)
class FitSettings:
    loss: str
    pretrain: bool
    pretrain_epochs: int
    epochs: int
    batch_size: int
    image_size: int
    device: str
    seed: int
    truth: str | None = None
    finetune: bool = False


def default_config(default_device: str) -> RunConfig:
    cfg = RunConfig()
    return gpu_profile(cfg) if default_device == "cuda" else cfg


def default_settings(cfg: RunConfig) -> FitSettings:
    return FitSettings(
        loss=cfg.classify.loss,
        pretrain=cfg.pretrain.enabled,
        pretrain_epochs=cfg.pretrain.epochs,
        epochs=cfg.classify.epochs,
        batch_size=cfg.classify.batch_size,
        image_size=cfg.data.image_size,
        device=cfg.device,
        seed=cfg.seed,
        finetune=cfg.finetune_after_fit,
    )


def fit_flags(settings: FitSettings, defaults: FitSettings) -> list[str]:
    """`fit` flags for the settings that differ from the defaults (see engine/cli.py)."""
    flags: list[str] = []
    if settings.loss != defaults.loss:
        flags += ["--loss", settings.loss]
    if not settings.pretrain:
        flags.append("--no-pretrain")
    elif settings.pretrain_epochs != defaults.pretrain_epochs:
        flags += ["--pretrain-epochs", str(settings.pretrain_epochs)]
    for flag, value, default in (
        ("--epochs", settings.epochs, defaults.epochs),
        ("--batch-size", settings.batch_size, defaults.batch_size),
        ("--image-size", settings.image_size, defaults.image_size),
        ("--device", settings.device, defaults.device),
        ("--seed", settings.seed, defaults.seed),
    ):
        if value != default:
            flags += [flag, str(value)]
    if settings.truth:
        flags += ["--truth", str(Path(settings.truth).expanduser())]
    if settings.finetune:
        flags.append("--finetune")
    return flags


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
