"""Small run folders for the decision tests: image files, data/manifest.csv and source.json, no training."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

from engine.runs.atomic import atomic_write_json
from engine.runs.rundir import RunDir

CLASSES = ("cat", "dog", "fox")


def image_bytes(key: str) -> bytes:
    """Distinct file contents per key: the same key in two runs is the same image (same sha256)."""
    return b"\x89PNG fake image " + key.encode()


def sha(key: str) -> str:
    return hashlib.sha256(image_bytes(key)).hexdigest()


def make_run(base: Path, images: Sequence[tuple[str, str, str]], *, classes: Sequence[str] = CLASSES,
             name: str = "run") -> RunDir:
    """A run at base/name over base/name-data: `images` are (path, given label, content key)."""
    root = base / f"{name}-data"
    for path, _, key in images:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(image_bytes(key))
    run = RunDir(base / name)
    run.data.mkdir(parents=True)
    with open(run.data / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["index", "id", "path", "label"])
        for i, (path, label, _) in enumerate(images):
            writer.writerow([i, f"{i:016x}", path, label])
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder", "truth": None,
                                   "test": None, "classes": list(classes)})
    return run
