"""Datasets for the Data page: save uploads inside the workspace, run the engine's intake, summarise.

Uploads are written only below `WORKSPACE/uploads/<id>/`: a zip is stored under a sanitised name and
extracted by `engine.data.intake.scan` (which refuses zip bombs, absolute names and `..`); a folder upload
is rebuilt from each file's relative name, component by component, with unsafe parts dropped and
letters of every script kept; no upload ever overwrites another.
No Streamlit here.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.data.intake import IMAGE_SUFFIXES, IntakeError, scan
from engine.review.metrics import TRUTH_NAMES
from ui import workspace

SAMPLE_LABEL = "Use the bundled sample (1,797 handwritten digits, 20 % noisy labels)"
_UPLOAD_SUFFIXES = IMAGE_SUFFIXES | {".csv"}  # images, and a truth.csv beside them


class Upload(Protocol):
    """What Streamlit's UploadedFile offers (and what tests fake)."""

    name: str

    def getbuffer(self) -> memoryview: ...


@dataclass(frozen=True)
class DatasetSummary:
    source: str  # what the person chose (folder, zip)
    root: str  # the folder the engine trains on (class folders inside)
    kind: str
    classes: list[str]
    counts: dict[str, int]
    n_images: int
    examples: dict[str, list[str]]  # a few absolute image paths per class
    skipped: list[tuple[str, str]]  # (path, reason)
    ignored: int
    truth: str | None = None  # truth.csv in the root, used automatically for metrics
    notes: list[str] = field(default_factory=list)


def summarize(source: Path, *, extract_to: Path | None = None, per_class: int = 6, seed: int = 0) -> DatasetSummary:
    """Intake report of a folder or zip. Raises IntakeError with a reason a person can act on.

    The examples of each class are a seeded random sample (the same on every visit), not the first files
    by name: those are often alike (one camera burst, one source), and mislabeled images hide anywhere.
    """
    record = scan(Path(source), extract_to=extract_to)
    root = Path(record.root)
    paths: dict[str, list[str]] = {c: [] for c in record.classes}
    for s in record.samples:
        paths[s.label].append(str(root / s.path))
    rng = random.Random(seed)
    examples = {c: rng.sample(p, min(per_class, len(p))) for c, p in paths.items()}
    truth = next((str(root / n) for n in TRUTH_NAMES if (root / n).is_file()), None)
    return DatasetSummary(
        source=str(source),
        root=str(root),
        kind=record.kind,
        classes=list(record.classes),
        counts=record.counts(),
        n_images=len(record.samples),
        examples=examples,
        skipped=[(s.path, s.reason) for s in record.skipped],
        ignored=int(record.ignored),
        truth=truth,
    )


def sample_data_path() -> Path | None:
    """The bundled sample (`sample_data/`, class folders + truth.csv), when present."""
    root = workspace.SAMPLE_DATA
    return root if root.is_dir() and any(p.is_dir() for p in root.iterdir()) else None


def save_zip(upload: Upload, upload_dir: Path) -> Path:
    """Store an uploaded .zip as `upload_dir/<safe name>.zip` (the intake extracts it next to it)."""
    name = workspace.safe_name(Path(upload.name).name, default="upload.zip")
    if not name.lower().endswith(".zip"):
        raise IntakeError(f"{upload.name!r} is not a .zip file: upload a .zip of one folder per class")
    target = upload_dir / name
    _write(target, upload, upload_dir)
    return target


def save_folder(files: Iterable[Upload], upload_dir: Path) -> tuple[Path, int]:
    """Rebuild an uploaded folder under `upload_dir/data/` from each file's relative name.

    Returns (the dataset folder, number of files left out because of their type). When every file sits
    under one top folder (the folder the person picked), that folder is the dataset. Two uploaded names
    that become the same file once made safe (e.g. 'x:1.png' and 'x?1.png') raise IntakeError naming both:
    writing the second over the first would silently lose an image or move it to another class.
    """
    data = upload_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    left_out = 0
    written: dict[Path, str] = {}  # target -> the uploaded name it came from
    for f in files:
        parts = workspace.safe_relative_parts(f.name)
        if not parts or Path(parts[-1]).suffix.lower() not in _UPLOAD_SUFFIXES:
            left_out += 1
            continue
        target = data.joinpath(*parts)
        try:
            _write(target, f, upload_dir)
        except FileExistsError:
            first = written.get(target, "an earlier file")
            raise IntakeError(
                f"{f.name!r} and {first!r} would both be saved as {target.relative_to(data).as_posix()!r}: "
                "rename one of them and upload the folder again") from None
        written[target] = f.name
    entries = [p for p in data.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0], left_out
    return data, left_out


def _write(target: Path, upload: Upload, upload_dir: Path) -> None:
    """Write one upload to `target`; never over an existing file (raises FileExistsError instead)."""
    if not workspace.is_inside(target, upload_dir):  # belt and braces: names were sanitised already
        raise IntakeError(f"refusing to write {target}: outside the upload folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        out.write(upload.getbuffer())


def discard_upload(upload_dir: Path) -> None:
    """Remove a failed upload (only ever below WORKSPACE/uploads)."""
    if workspace.is_inside(upload_dir, workspace.uploads_root()) and upload_dir != workspace.uploads_root():
        shutil.rmtree(upload_dir, ignore_errors=True)
