"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded with weights_only=True.

Nothing pickled (no dataclasses, no numpy scalars), so `torch.load(path, weights_only=True)` — the
PyTorch >= 2.6 default — always works, including in a process that never ran the training code.

A checkpoint that cannot be loaded that way (cut short, overwritten, someone else's pickle) is a
damaged run file: `load_checkpoint` raises engine.runs.atomic.DamagedFile, which the worker words as
one sentence with the repair (engine.runs.integrity). torch's own message is never passed on: for a
pickle it refuses, it advises loading with weights_only switched off, which would run the file's code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine.runs.atomic import DamagedFile
from engine.runs.rundir import RunDir

# The checkpoints that record a finished stage carry these; an epoch checkpoint (<stage>.last.pt) these.
FINAL_KEYS = ("net", "stage")
EPOCH_KEYS = ("_epoch", "_rng", "_history")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a kill -9 leaves either the old or the new file, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: torch.device | str = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict. FileNotFoundError when there is none; DamagedFile when it cannot be loaded
    with weights_only=True or is not a dict."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if not path.is_file():
        raise DamagedFile(path, "not a regular file")
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise DamagedFile(path, "it holds objects a CLeaN checkpoint never holds") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        raise DamagedFile(path, f"not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise DamagedFile(path, f"it holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a run's checkpoint, loaded as the stages will load it (memory-mapped, so
    cheap); None when it is fine. `<stage>.pt` must be the checkpoint of that stage."""
    path = Path(path)
    try:
        state = load_checkpoint(path, "cpu", mmap=True)
    except FileNotFoundError:
        return None
    except DamagedFile as e:
        return e.reason
    stage, epoch = RunDir.checkpoint_of(path) or (path.stem, False)
    missing = [k for k in (EPOCH_KEYS if epoch else FINAL_KEYS) if k not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if not epoch and state.get("stage") != stage:
        return f"it is the checkpoint of {state.get('stage')!r}, not of {stage}"
    return None


def saved_config(paths: list[Path]) -> dict[str, Any] | None:
    """The run config a finished stage saved in its checkpoint (the first of `paths` that loads)."""
    for path in paths:
        try:
            config = load_checkpoint(path, "cpu", mmap=True).get("config")
        except (FileNotFoundError, DamagedFile):
            continue
        if isinstance(config, dict):
            return config
    return None
