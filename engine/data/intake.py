"""Intake: turn what a person hands us (a folder, a .zip or a CSV manifest) into a dataset record.

Accepted inputs:

* a folder with one sub-folder per class; images may sit at any depth below their class folder, and
  the label is the name of the top-level sub-folder (`cat/2021/img.png` is a "cat");
* a `.zip` of such a folder (a single top folder inside the zip is fine), extracted safely first;
* a CSV manifest with `path,label` columns, paths relative to the CSV's folder (or `root`).

Nothing unusable crashes the intake: each file that cannot be used is listed in `skipped` with its
reason (empty, truncated, not an image, decompression bomb, link out of the folder, ...), files that
are not images (README, truth.csv) are counted in `ignored`, and hidden files (`.DS_Store`,
`__MACOSX/`) are left out silently. Data that cannot be trained on at all (no class folders, fewer than
two classes with images, a zip bomb) raises `IntakeError` with a message that names the problem.

This module imports no torch and no streamlit: the app imports it for its data report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from engine.data.decode import DEFAULT_MAX_PIXELS, DecodeError, check_image
from engine.data.safezip import ZipLimits, ZipRejected, is_hidden, safe_extract
from engine.errors import UserError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tga", ".ico"}
)
Kind = Literal["folder", "zip", "csv"]
Candidates = list[tuple[str, str]]  # (relative POSIX path, label) of files still to be checked
Check = Literal["full", "header"]
_ZIP_MARKER = ".clean-zip.json"  # hidden, so the intake of the extracted folder never sees it


class IntakeError(UserError):
    """The data cannot be used as given; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Sample:
    id: str  # stable across rescans: derived from the path
    path: str  # POSIX, relative to the record's root
    label: str


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class IntakeLimits:
    max_files: int = 1_000_000  # image files in one data set
    max_zip_members: int = 1_000_000
    max_zip_uncompressed_bytes: int = 32 * 1024**3  # 32 GiB once extracted
    max_file_bytes: int = 256 * 1024**2  # one image file
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # Pillow's decompression-bomb limit (about 89 megapixels)
    min_classes: int = 2  # training needs two; a clean test folder may hold fewer


@dataclass(frozen=True)
class DatasetRecord:
    root: Path
    source: Path
    kind: Kind
    samples: tuple[Sample, ...]  # sorted by path
    classes: tuple[str, ...]  # sorted class names
    skipped: tuple[Skipped, ...]  # every file skipped, with its reason
    ignored: int  # non-image files left out (README, truth.csv, ...)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        per = Counter(s.label for s in self.samples)
        return {c: per.get(c, 0) for c in self.classes}

    def label_indices(self) -> np.ndarray:
        """(N,) int64 index of each sample's label into `classes`."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.fromiter((index[s.label] for s in self.samples), dtype=np.int64, count=len(self.samples))

    def to_report(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "kind": self.kind,
            "root": str(self.root),
            "n_images": len(self.samples),
            "classes": list(self.classes),
            "counts": self.counts(),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "ignored": self.ignored,
        }


def sample_id(path: str) -> str:
    """Stable id of an image: the same relative path gives the same id on every scan."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def scan(
    source: Path,
    *,
    root: Path | None = None,
    extract_to: Path | None = None,
    limits: IntakeLimits = IntakeLimits(),
    check: Check = "full",
) -> DatasetRecord:
    """Build the dataset record of a folder, a .zip or a CSV manifest.

    Args:
        source: the folder, .zip or .csv.
        root: CSV only: the folder the manifest's paths are relative to (default: the CSV's folder).
        extract_to: zip only: an empty or new folder to extract into (default: a fresh temporary folder,
            which the caller owns). A folder already holding an extraction of the same zip is reused.
        limits: file-count, size and pixel limits.
        check: "full" decodes every image (catches truncated files); "header" only opens and verifies.

    Raises:
        IntakeError: the data cannot be trained on; the message names the problem.
    """
    source = Path(source)
    if check not in ("full", "header"):
        raise ValueError(f"check must be 'full' or 'header', got {check!r}")
    if not source.exists():
        raise IntakeError(f"{source} does not exist")
    if not source.is_dir() and not source.is_file():
        # A named pipe or a device called "x.csv" would block the first read forever.
        raise IntakeError(f"{source} is not a regular file: give a folder, a .zip or a .csv manifest")
    if source.is_dir():
        data_root = source.resolve()
        candidates, skipped, ignored = _walk_class_folders(data_root, limits)
        kind: Kind = "folder"
    elif source.suffix.lower() == ".zip":
        dest, data_root, zip_skipped = _extract_zip(source, extract_to, limits)
        try:
            return _zip_record(source, data_root, zip_skipped, limits, check)
        except BaseException:
            if extract_to is None:  # our own temporary folder: nobody else will remove it
                shutil.rmtree(dest, ignore_errors=True)
            raise
    elif source.suffix.lower() == ".csv":
        data_root = Path(root).resolve() if root is not None else source.resolve().parent
        candidates, skipped, ignored = _read_manifest(source, data_root, limits)
        kind = "csv"
    else:
        raise IntakeError(f"{source} is not a folder, a .zip or a .csv manifest")

    return _record(source, kind, data_root, candidates, skipped, ignored, limits, check)


def _zip_record(
    source: Path, data_root: Path, zip_skipped: list[Skipped], limits: IntakeLimits, check: Check
) -> DatasetRecord:
    candidates, skipped, ignored = _walk_class_folders(data_root, limits)
    return _record(source, "zip", data_root, candidates, zip_skipped + skipped, ignored, limits, check)


def _record(
    source: Path,
    kind: Kind,
    root: Path,
    candidates: Candidates,
    skipped: list[Skipped],
    ignored: int,
    limits: IntakeLimits,
    check: Check,
) -> DatasetRecord:
    samples, bad = _check_files(root, candidates, limits, check)
    skipped = sorted(skipped + bad, key=lambda s: s.path)
    classes = tuple(sorted({s.label for s in samples}))
    _require_two_classes(source, samples, classes, skipped, limits.min_classes)
    return DatasetRecord(
        root=root,
        source=source.resolve(),
        kind=kind,
        samples=tuple(sorted(samples, key=lambda s: s.path)),
        classes=classes,
        skipped=tuple(skipped),
        ignored=ignored,
    )


# ----------------------------------------------------------------------------- folders


@dataclass
class _Walk:
    """What walking a folder found; `candidates` are (relative path, label) still to be checked."""

    candidates: Candidates = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    ignored: int = 0
    root_images: list[str] = field(default_factory=list)


def _walk_class_folders(root: Path, limits: IntakeLimits) -> tuple[Candidates, list[Skipped], int]:
    found = _Walk()
    for rel, entry in _iter_entries(root, found):
        if entry.is_dir(follow_symlinks=False):
            continue
        if not _is_image_name(rel):
            found.ignored += 1
            continue
        name_problem = _name_problem(rel)
        if name_problem is not None:
            found.skipped.append(Skipped(_shown_path(rel), name_problem))
            continue
        top, _, rest = rel.partition("/")
        if not rest:
            found.root_images.append(rel)
            continue
        found.candidates.append((rel, top))
        if len(found.candidates) > limits.max_files:
            raise IntakeError(
                f"{root} holds more than the limit of {limits.max_files} images for one data set: "
                "split it or raise the limit"
            )
    if found.root_images and not found.candidates:
        raise IntakeError(
            f"no class folders found in {root}: put images in one sub-folder per class "
            f"(found {len(found.root_images)} images directly in the folder)"
        )
    found.skipped.extend(Skipped(p, "image outside any class folder") for p in found.root_images)
    return found.candidates, found.skipped, found.ignored


def _iter_entries(root: Path, found: _Walk) -> Iterator[tuple[str, os.DirEntry]]:
    """Yield (relative POSIX path, entry) for regular files and folders, depth first in name order.

    Symbolic links are never followed into folders; a link to a file is used only when it resolves
    inside `root`. Hidden entries are left out.
    """
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.skipped.append(Skipped(_shown_path(rel_folder or "."), f"cannot read folder ({e.strerror or e})"))
            continue
        subfolders = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            if entry.is_symlink():
                reason = _symlink_problem(root, entry)
                if reason is None:
                    yield rel, entry
                elif reason != "ignore":
                    found.skipped.append(Skipped(_shown_path(rel), reason))
                else:
                    found.ignored += 1
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, rel))
                yield rel, entry
            elif entry.is_file(follow_symlinks=False):
                yield rel, entry
            elif _is_image_name(entry.name):
                found.skipped.append(Skipped(_shown_path(rel), "not a regular file"))
        stack.extend(reversed(subfolders))


def _symlink_problem(root: Path, entry: os.DirEntry) -> str | None:
    """None when a link may be used as a file; else the reason it is skipped ("ignore": not an image)."""
    target = Path(os.path.realpath(entry.path))
    if not target.exists():
        return "broken symbolic link"
    if target.is_dir():
        return "symbolic link to a folder (not followed)"
    if not _is_image_name(entry.name):
        return "ignore"
    if not target.is_relative_to(root):
        return "symbolic link pointing outside the data folder (not followed)"
    if not target.is_file():  # a link to a named pipe would block the decoder forever
        return "not a regular file"
    return None


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _is_utf8(part: str) -> bool:
    """False for a name that was not valid UTF-8 on disk (Python keeps its bad bytes as surrogates)."""
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name_problem(rel: str) -> str | None:
    """Why a path cannot be used as a sample (ids, reports and labels need text), or None."""
    *folders, name = rel.split("/")
    if not _is_utf8(name):
        return "file name is not valid UTF-8; rename it"
    if not all(_is_utf8(f) for f in folders):
        return "folder name is not valid UTF-8; rename it"
    return None


def _shown_path(rel: str) -> str:
    """A path as printable text: bytes that are not UTF-8 appear as \\xNN, so reports and JSON never fail."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- zip


def _extract_zip(source: Path, extract_to: Path | None, limits: IntakeLimits) -> tuple[Path, Path, list[Skipped]]:
    """(extraction folder, data root inside it, refused members)."""
    zip_limits = ZipLimits(
        max_members=limits.max_zip_members,
        max_total_bytes=limits.max_zip_uncompressed_bytes,
        max_file_bytes=limits.max_file_bytes,
    )
    stamp = _zip_stamp(source)
    if extract_to is None:
        dest = Path(tempfile.mkdtemp(prefix="clean-zip-"))
        work = dest
    else:
        dest = Path(extract_to)
        reused = _reuse_extraction(dest, stamp)
        if reused is not None:
            return dest, _data_root(dest), reused
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise IntakeError(f"cannot extract {source.name} into {dest}: the folder is not empty")
        # Extract next to `dest` and rename at the end: an interrupted extraction never looks complete.
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        refused = safe_extract(source, work, zip_limits)
        skipped = [Skipped(r.name, r.reason) for r in refused]
        marker = {**stamp, "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
        (work / _ZIP_MARKER).write_text(json.dumps(marker), encoding="utf-8")
        if work != dest:
            if dest.exists():
                dest.rmdir()  # empty, checked above
            os.replace(work, dest)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, ZipRejected):
            raise IntakeError(str(e)) from e
        raise
    return dest, _data_root(dest), skipped


def _zip_stamp(source: Path) -> dict[str, Any]:
    st = source.stat()
    return {"zip": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _reuse_extraction(dest: Path, stamp: dict[str, Any]) -> list[Skipped] | None:
    """The refused members of an earlier extraction of this same zip into `dest`, or None."""
    try:
        marker = json.loads((dest / _ZIP_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if any(marker.get(k) != v for k, v in stamp.items()):
        return None
    return [Skipped(s["path"], s["reason"]) for s in marker.get("skipped", [])]


def _data_root(dest: Path) -> Path:
    """A zip of `dataset/<class>/...` extracts to one folder holding the class folders: descend into it."""
    # A README or licence beside the top folder is not data: only folders and images count here.
    visible = [p for p in dest.iterdir() if not is_hidden(p.name) and (p.is_dir() or _is_image_name(p.name))]
    if len(visible) == 1 and visible[0].is_dir() and not visible[0].is_symlink():
        inner = visible[0]
        if any(p.is_dir() and not is_hidden(p.name) for p in inner.iterdir()):
            return inner.resolve()
    return dest.resolve()


# ----------------------------------------------------------------------------- CSV manifests


def _read_manifest(csv_path: Path, root: Path, limits: IntakeLimits) -> tuple[Candidates, list[Skipped], int]:
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise IntakeError(f"{csv_path} is not UTF-8 text: save the manifest as UTF-8 CSV") from e
    except (OSError, csv.Error) as e:
        raise IntakeError(f"cannot read {csv_path} as CSV ({e})") from e
    header = [h.strip().lower() for h in rows[0]] if rows else []
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        names = " and ".join(f"'{c}'" for c in missing)
        raise IntakeError(f"{csv_path} has no {names} column: the first row must name the columns path,label")
    if not root.is_dir():
        raise IntakeError(f"the folder {root} that the manifest's paths are relative to does not exist")
    i_path, i_label = header.index("path"), header.index("label")
    candidates: Candidates = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        raw = row[i_path].strip() if i_path < len(row) else ""
        label = row[i_label].strip() if i_label < len(row) else ""
        rel, reason = _manifest_path(root, raw)
        where = rel or raw or f"(line {line_no})"
        if reason is None and not label:
            reason = f"empty label on line {line_no}"
        if reason is None and rel in seen:
            reason = f"listed twice (line {line_no})"
        if reason is not None:
            skipped.append(Skipped(where, reason))
            continue
        seen.add(rel)
        candidates.append((rel, label))
        if len(candidates) > limits.max_files:
            raise IntakeError(f"{csv_path} lists more than the limit of {limits.max_files} images for one data set: "
                              "split it or raise the limit")
    return candidates, skipped, 0


def _manifest_path(root: Path, raw: str) -> tuple[str, str | None]:
    """(POSIX path relative to root, reason to skip or None)."""
    if not raw:
        return "", "empty path"
    given = Path(raw.replace("\\", "/"))
    absolute = Path(os.path.normpath(given if given.is_absolute() else root / given))
    if not absolute.is_relative_to(root):
        return raw, "outside the data folder (not read)"
    rel = absolute.relative_to(root).as_posix()
    if not Path(os.path.realpath(absolute)).is_relative_to(root):  # a link in any part of the path
        return rel, "symbolic link pointing outside the data folder (not followed)"
    if not absolute.exists():
        return rel, "file not found"
    if not absolute.is_file():
        return rel, "not a file"
    return rel, None


# ----------------------------------------------------------------------------- checking images


def _check_files(
    root: Path, candidates: Candidates, limits: IntakeLimits, check: Check
) -> tuple[list[Sample], list[Skipped]]:
    """Open (header) or decode (full) every candidate in a thread pool: Pillow decodes with the GIL released."""

    def one(item: tuple[str, str]) -> str | None:
        rel, _ = item
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError:
            return "file not found"
        if size > limits.max_file_bytes:
            return f"file too large ({size} bytes > limit {limits.max_file_bytes})"
        try:
            check_image(path, full=check == "full", max_pixels=limits.max_image_pixels)
        except DecodeError as e:
            return e.reason
        return None

    workers = max(1, min(8, 2 * (os.cpu_count() or 1), len(candidates)))
    if workers == 1:
        reasons = [one(c) for c in candidates]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="intake") as pool:
            reasons = list(pool.map(one, candidates))
    pairs = list(zip(candidates, reasons, strict=True))
    samples = [Sample(sample_id(rel), rel, label) for (rel, label), r in pairs if r is None]
    skipped = [Skipped(rel, r) for (rel, _), r in pairs if r is not None]
    return samples, skipped


def _require_two_classes(
    source: Path, samples: list[Sample], classes: tuple[str, ...], skipped: list[Skipped], min_classes: int = 2
) -> None:
    if samples and len(classes) >= min_classes:
        return
    note = ""
    if skipped:
        reasons = Counter(s.reason.split(" (")[0].split(":")[0] for s in skipped).most_common(3)
        note = f" ({len(skipped)} files skipped: " + ", ".join(f"{n} {r}" for r, n in reasons) + ")"
    if not samples:
        raise IntakeError(f"no usable images found in {source}{note}")
    raise IntakeError(
        f"only one class ({classes[0]!r}) has usable images in {source}: training needs at least two classes{note}"
    )
