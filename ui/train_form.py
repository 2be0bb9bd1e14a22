"""The Train page's settings and the `fit` flags they turn into (no Streamlit here).

The form shows the profile the engine will start from for the chosen device: `RunConfig()` on a CPU,
`gpu_profile(RunConfig())` on a GPU ("auto" is the detected device, as `engine.cli.run` resolves it).
The schedule the form shows (loss, epochs, image size, seed) is always passed as flags, so the run
trains for exactly what the person saw whatever profile the worker starts from; the batch size is
passed only when changed, because `--batch-size` also sets the SimCLR and fine-tuning batches, which
the profiles keep larger than the classifier's.
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


def engine_device(device: str, detected_default: str) -> str:
    """The device whose profile the engine starts from: the chosen one, or the detected one for "auto"."""
    return detected_default if device == "auto" else device


def default_config(device: str) -> RunConfig:
    """The profile `fit` starts from on `device` ("cpu" or "cuda"; see engine.cli.run._base_config)."""
    cfg = RunConfig()
    return gpu_profile(cfg) if device == "cuda" else cfg


def default_settings(cfg: RunConfig, device: str | None = None) -> FitSettings:
    """The form's initial values: `cfg`'s settings, with the device selector at `device` (default: cfg's)."""
    return FitSettings(
        loss=cfg.classify.loss,
        pretrain=cfg.pretrain.enabled,
        pretrain_epochs=cfg.pretrain.epochs,
        epochs=cfg.classify.epochs,
        batch_size=cfg.classify.batch_size,
        image_size=cfg.data.image_size,
        device=device or cfg.device,
        seed=cfg.seed,
        finetune=cfg.finetune_after_fit,
    )


def fit_flags(settings: FitSettings, defaults: FitSettings) -> list[str]:
    """`fit` flags for `settings` (see engine/cli.py); `defaults` = the profile the engine starts from."""
    flags = ["--loss", settings.loss]
    if settings.pretrain:
        flags += ["--pretrain-epochs", str(settings.pretrain_epochs)]
    else:
        flags.append("--no-pretrain")
    flags += ["--epochs", str(settings.epochs)]
    if settings.batch_size != defaults.batch_size:
        flags += ["--batch-size", str(settings.batch_size)]
    flags += ["--image-size", str(settings.image_size)]
    if settings.device != "auto":
        flags += ["--device", settings.device]
    flags += ["--seed", str(settings.seed)]
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
