"""Prepare: decode every image of a dataset record exactly once into a uint8 cache.

Training reads pixels many times per epoch; decoding PNG/JPEG files each time would cost more than
the model on a CPU. `prepare` decodes each image once to the working size (engine.data.decode's policy:
shorter side resized, center crop) and writes

    OUT/images.npy      (N, S, S, 3) uint8 in NumPy's .npy format: `np.load(..., mmap_mode="r")`
                        maps it without reading it, so the cache may be larger than memory
    OUT/manifest.csv    index,id,path,label: row i describes images[i]
    OUT/intake.json     the intake report (including images that failed to decode here),
                        the working size and a fingerprint of the record

Every file is written to a temporary name and moved into place (os.replace). intake.json is removed
first and written last, so it marks a complete cache: `is_prepared` compares its fingerprint (paths,
labels, file sizes and modification times, working size) to let a rerun skip decoding.

A cache can also be damaged from outside (cut short, overwritten). `cache_problem` checks the cache
against itself — intake.json readable, images.npy's header and size against intake.json's count and
size, manifest.csv's rows — before anything compares fingerprints, so a damaged cache is named as such
and never mistaken for a cache of other images.

Workers write straight into the memory-mapped output, so no pixels are copied between them. They are
threads by default: Pillow decodes and resizes with the GIL released, and on two cores threads were as
fast as worker processes for 32 px PNGs and faster for large JPEGs, where starting processes costs
more than it saves (bench/prepare_speed.py measures both). Processes use "spawn", never "fork": the
caller may be a training process with threads running.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from engine.data.intake import DatasetRecord, IntakeError, Skipped
from engine.errors import UserError
from engine.runs.atomic import (
    DamagedFile,
    atomic_write_json,
    atomic_write_text,
    load_json,
    now_iso,
    npy_header,
    read_regular_bytes,
)

CACHE_FORMAT = 1
# The cache's own files, named here only (a cache lives in RUN/data/ or wherever `prepare --out` puts it).
IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.csv"
INTAKE_FILE = "intake.json"  # removed first and written last: it marks a complete cache
CACHE_FILES = (IMAGES_FILE, MANIFEST_FILE, INTAKE_FILE)
MANIFEST_COLUMNS = ("index", "id", "path", "label")
Progress = Callable[[int, int], None]
PoolKind = Literal["thread", "process"]
_PROGRESS_INTERVAL_S = 0.1


@dataclass(frozen=True)
class PreparedData:
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped read-only
    labels: np.ndarray  # (N,) int64 index into classes
    classes: tuple[str, ...]
    paths: tuple[str, ...]  # POSIX, relative to root
    ids: tuple[str, ...]
    root: Path
    skipped: tuple[Skipped, ...]  # skipped at intake or while decoding

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def fingerprint(record: DatasetRecord, image_size: int) -> str:
    """Hash of what the cache depends on: every path, label, file size and modification time, and S."""
    h = hashlib.sha256(f"clean-cache/{CACHE_FORMAT}/{image_size}\n".encode())
    for s in record.samples:
        try:
            st = (record.root / s.path).stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{s.path}\0{s.label}\0{stamp}\n".encode())
    return h.hexdigest()


def prepare(
    record: DatasetRecord,
    out_dir: Path,
    *,
    image_size: int,
    workers: int | None = None,
    progress: Progress | None = None,
    pool: PoolKind = "thread",
) -> PreparedData:
    """Decode every image of `record` once to `image_size` and write the cache to `out_dir`.

    Args:
        record: from engine.data.intake.scan.
        out_dir: cache folder (created); an older cache there is replaced.
        image_size: working size S.
        workers: decoding workers (default: the CPUs this process may use).
        progress: called as progress(done, total), at most about 10 times a second, and once at the end.
        pool: "thread" (default) or "process" (spawned workers: scripts calling this need an
            `if __name__ == "__main__":` guard).

    Returns:
        PreparedData with images (N, S, S, 3) uint8; images that fail to decode are dropped and listed in
        `skipped`, so N may be smaller than len(record.samples).

    Raises:
        IntakeError: fewer than two classes still have images after decoding.
    """
    if image_size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    if pool not in ("thread", "process"):
        raise ValueError(f"pool must be 'thread' or 'process', got {pool!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INTAKE_FILE).unlink(missing_ok=True)  # the completeness marker goes first
    n = len(record.samples)
    if n == 0:
        raise IntakeError(f"no images to prepare in {record.source}")
    raw, packed = _temp_path(out_dir, ".images."), _temp_path(out_dir, ".images.packed.")
    try:
        np.lib.format.open_memmap(raw, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)).flush()
        failures = _decode_all(raw, record, image_size, _worker_count(workers), progress, pool)
        keep = np.array([i for i in range(n) if i not in failures], dtype=np.int64)
        _require_two_classes(record, keep)
        if len(keep) < n:
            _copy_rows(raw, packed, keep)
            os.replace(packed, out_dir / IMAGES_FILE)
            raw.unlink()
        else:
            os.replace(raw, out_dir / IMAGES_FILE)
    finally:
        raw.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)
    decode_skips = [Skipped(record.samples[i].path, reason) for i, reason in failures.items()]
    kept = [record.samples[i] for i in keep]
    atomic_write_text(out_dir / MANIFEST_FILE, _manifest_text(kept))
    atomic_write_json(out_dir / INTAKE_FILE, _intake_json(record, kept, decode_skips, image_size))
    return load_prepared(out_dir)


def load_prepared(out_dir: Path) -> PreparedData:
    """Open a cache written by `prepare` (images memory-mapped, read-only).

    Raises:
        FileNotFoundError: no complete cache in `out_dir`.
        IntakeError: the files disagree with each other (edited or damaged).
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / INTAKE_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"no prepared data in {out_dir} (intake.json missing): run prepare first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(out_dir / IMAGES_FILE, mmap_mode="r")
        with open(out_dir / MANIFEST_FILE, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise
    except (ValueError, OSError, csv.Error) as e:
        raise IntakeError(f"prepared data in {out_dir} is damaged ({e}): run prepare again") from e
    classes = tuple(meta.get("classes", []))
    problem = _inconsistency(meta, images, rows, classes)
    if problem:
        raise IntakeError(f"prepared data in {out_dir} is inconsistent: {problem}; run prepare again")
    index = {c: i for i, c in enumerate(classes)}
    body = rows[1:]
    return PreparedData(
        images=images,
        labels=np.array([index[r[3]] for r in body], dtype=np.int64),
        classes=classes,
        paths=tuple(r[2] for r in body),
        ids=tuple(r[1] for r in body),
        root=Path(meta.get("root", "")),
        skipped=tuple(Skipped(s["path"], s["reason"]) for s in meta.get("skipped", [])),
    )


def is_prepared(out_dir: Path, record: DatasetRecord, image_size: int) -> bool:
    """True when `out_dir` holds a complete, undamaged cache of exactly this record at this size."""
    out_dir = Path(out_dir)
    if cache_problem(out_dir) is not None:
        return False
    meta = load_json(out_dir / INTAKE_FILE)
    return (meta.get("format") == CACHE_FORMAT and meta.get("image_size") == image_size
            and meta.get("fingerprint") == fingerprint(record, image_size))


MISSING = "missing"  # cache_problem's reason for a file that is not there
_MAX_MANIFEST_BYTES = 1 << 30


def cache_problem(out_dir: Path) -> tuple[str, str] | None:
    """The first cache file in `out_dir` that is missing or damaged, and why (reason MISSING when it is
    not there); None when the cache is complete and agrees with itself.

    Cheap: intake.json, the header and size of images.npy, and manifest.csv are read; no pixel is.
    """
    out_dir = Path(out_dir)
    try:
        meta = load_json(out_dir / INTAKE_FILE)
    except FileNotFoundError:
        return INTAKE_FILE, MISSING
    except DamagedFile as e:
        return INTAKE_FILE, e.reason
    problem = _meta_problem(meta)
    if problem:
        return INTAKE_FILE, problem
    n, size = meta["n_images"], meta["image_size"]
    try:
        shape, dtype = npy_header(out_dir / IMAGES_FILE)
    except FileNotFoundError:
        return IMAGES_FILE, MISSING
    except DamagedFile as e:
        return IMAGES_FILE, e.reason
    if dtype != np.uint8 or shape != (n, size, size, 3):
        return IMAGES_FILE, f"it holds {shape} {dtype} where intake.json says ({n}, {size}, {size}, 3) uint8"
    try:
        text = read_regular_bytes(out_dir / MANIFEST_FILE, max_bytes=_MAX_MANIFEST_BYTES).decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except FileNotFoundError:
        return MANIFEST_FILE, MISSING
    except DamagedFile as e:
        return MANIFEST_FILE, e.reason
    except (UnicodeDecodeError, csv.Error) as e:
        return MANIFEST_FILE, f"not a readable CSV file ({type(e).__name__})"
    return _manifest_problem(rows, n, set(meta["classes"]))


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key in ("n_images", "image_size", "format"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
            return f"no valid {key}"
    if not isinstance(meta.get("classes"), list) or not all(isinstance(c, str) for c in meta["classes"]):
        return "no valid list of classes"
    return None


def _manifest_problem(rows: list[list[str]], n: int, known: set[str]) -> tuple[str, str] | None:
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
        return MANIFEST_FILE, "it does not start with the header index,id,path,label"
    if len(rows) - 1 != n:
        return MANIFEST_FILE, f"it has {len(rows) - 1} rows where intake.json says {n} images"
    for k, row in enumerate(rows[1:]):
        if len(row) != 4 or row[0] != str(k) or row[3] not in known:
            return MANIFEST_FILE, f"row {k + 1} is malformed or has an unknown label"
    return None


# ----------------------------------------------------------------------------- decoding


def _decode_all(
    npy: Path, record: DatasetRecord, size: int, workers: int, progress: Progress | None, pool: PoolKind
) -> dict[int, str]:
    """Decode every sample into row i of the .npy at `npy`; return {row: reason} for failures."""
    n = len(record.samples)
    jobs = [(i, s.path) for i, s in enumerate(record.samples)]
    chunk = max(16, min(256, n // max(1, workers * 8)))
    chunks = [jobs[k : k + chunk] for k in range(0, n, chunk)]
    report = _Throttled(progress, n)
    report(0)
    failures: dict[int, str] = {}
    done = 0
    with _executor(pool, workers) as executor:
        futures = {
            executor.submit(_decode_rows, str(npy), str(record.root), c, size, DEFAULT_MAX_PIXELS): len(c)
            for c in chunks
        }
        try:
            for future in as_completed(futures):
                failures.update(future.result())
                done += futures[future]
                report(done)
        except BaseException:  # a stop request: drop the queued chunks instead of decoding them all first
            executor.shutdown(wait=True, cancel_futures=True)
            raise
    return dict(sorted(failures.items()))


def _decode_rows(npy: str, root: str, jobs: Sequence[tuple[int, str]], size: int, max_pixels: int) -> dict[int, str]:
    """Worker: decode (row, relative path) jobs into the memory-mapped .npy; return {row: reason} failures.

    Module level so that spawned worker processes can unpickle it.
    """
    images = np.load(npy, mmap_mode="r+")
    failures: dict[int, str] = {}
    for i, rel in jobs:
        try:
            images[i] = decode_image(os.path.join(root, rel), size, max_pixels=max_pixels)
        except DecodeError as e:
            failures[i] = e.reason
        except Exception as e:  # one odd file must not stop the other 50,000
            failures[i] = f"could not decode ({type(e).__name__}: {e})"
    images.flush()
    del images
    return failures


def _executor(pool: PoolKind, workers: int) -> Executor:
    if pool == "process":
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Throttled:
    """Calls progress(done, total) at most every 0.1 s, and always for the first and last call."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.last = -float("inf")

    def __call__(self, done: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if done in (0, self.total) or now - self.last >= _PROGRESS_INTERVAL_S:
            self.last = now
            self.progress(done, self.total)


# ----------------------------------------------------------------------------- writing


def _temp_path(folder: Path, prefix: str) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".npy.tmp")
    os.close(fd)
    return Path(name)


def _copy_rows(src: Path, dst: Path, keep: np.ndarray) -> None:
    """Write rows `keep` of the .npy at `src` into a new .npy at `dst`, a block at a time (bounded memory)."""
    images = np.load(src, mmap_mode="r")
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.uint8, shape=(len(keep), *images.shape[1:]))
    step = 4096
    for k in range(0, len(keep), step):
        out[k : k + step] = images[keep[k : k + step]]
    out.flush()
    del out, images


def _require_two_classes(record: DatasetRecord, keep: np.ndarray) -> None:
    labels = {record.samples[i].label for i in keep}
    if len(labels) < min(2, len(record.classes)):  # a one-class record (a test folder) was allowed by its scan
        raise IntakeError(
            f"after decoding, {'only one class has' if labels else 'no class has'} usable images in {record.source}: "
            "training needs at least two classes"
        )


def _manifest_text(samples: Sequence[Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for i, s in enumerate(samples):
        writer.writerow([i, s.id, s.path, s.label])
    return buf.getvalue()


def _intake_json(record: DatasetRecord, kept: Sequence[Any], decode_skips: list[Skipped], size: int) -> dict:
    report = record.to_report()
    per = {c: 0 for c in record.classes}
    for s in kept:
        per[s.label] += 1
    skipped = sorted([*record.skipped, *decode_skips], key=lambda s: s.path)
    report.update(
        n_images=len(kept),
        n_scanned=len(record.samples),
        counts=per,
        skipped=[{"path": s.path, "reason": s.reason} for s in skipped],
        decode_failures=len(decode_skips),
        image_size=size,
        fingerprint=fingerprint(record, size),
        format=CACHE_FORMAT,
        prepared_at=now_iso(),
    )
    return report


def _inconsistency(meta: dict, images: np.ndarray, rows: list[list[str]], classes: tuple[str, ...]) -> str | None:
    size = meta.get("image_size")
    n = meta.get("n_images")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        return f"images.npy has shape {images.shape} {images.dtype}, expected (N, {size}, {size}, 3) uint8"
    if not rows or tuple(rows[0]) != MANIFEST_COLUMNS:
        return "manifest.csv does not start with the header index,id,path,label"
    if not (images.shape[0] == len(rows) - 1 == n):
        return f"images.npy has {images.shape[0]} images, manifest.csv {len(rows) - 1} rows, intake.json says {n}"
    known = set(classes)
    for k, row in enumerate(rows[1:]):
        if len(row) != 4 or row[0] != str(k) or row[3] not in known:
            return f"manifest.csv row {k + 1} is malformed or has an unknown label"
    return None
