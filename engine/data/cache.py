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

Decoding runs in up to `workers` processes (default: every core this process may use): this one and
workers - 1 spawned helpers, each writing its rows straight into the memory-mapped output, so no pixels
are copied between them and the bytes are those of a one-process run. Threads would share one GIL, and
for small images the per-file Python work under it dominates (bench/results/prepare_speed.md). Helpers
start only for datasets that take more than a few seconds to decode (a spawn costs more than it saves
below that), and this process keeps decoding while they start. They use "spawn", never "fork": the
caller may be a training process with threads running.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import multiprocessing
import os
import queue
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
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
# A helper process costs 0.5-1 s of imports to start, on a core the decoding needs too: on 2 cores it
# slowed a 4 s prepare and sped up an 8 s one (bench/results/prepare_speed.md). Below this many seconds
# of work left (estimated from the first _PROBE_S of decoding), this process decodes everything itself.
_PARALLEL_AFTER_S = 4.0
_PROBE_S = 0.3


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
    pool: PoolKind = "process",
) -> PreparedData:
    """Decode every image of `record` once to `image_size` and write the cache to `out_dir`.

    Args:
        record: from engine.data.intake.scan.
        out_dir: cache folder (created); an older cache there is replaced.
        image_size: working size S.
        workers: decoders in all, this process included (None or 0: the CPUs this process may use).
        progress: called as progress(done, total) from this thread, at most about 10 times a second, and
            once at the end; an exception it raises (a stop request) cancels the queued work.
        pool: "process" (default; the helpers are spawned, so a script calling this needs an
            `if __name__ == "__main__":` guard) or "thread".

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
    """Decode every sample into row i of the .npy at `npy`; return {row: reason} for failures.

    `workers` decoders in all: this process and workers - 1 helpers. This process decodes chunks from the
    back of the list; it starts helpers only when what is left would take it more than _PARALLEL_AFTER_S,
    and a helper is handed chunks from the front only once it runs, so a small dataset never waits for a
    spawn and a large one keeps every core busy. Each row is written by exactly one decoder running the
    same function, so the bytes do not depend on the number of workers.
    """
    n = len(record.samples)
    jobs = [(i, s.path) for i, s in enumerate(record.samples)]
    chunk = max(16, min(256, n // max(1, workers * 8)))
    chunks = [jobs[k : k + chunk] for k in range(0, n, chunk)]
    decode = functools.partial(_decode_rows, str(npy), str(record.root), size=size, max_pixels=DEFAULT_MAX_PIXELS)
    work = _Work(chunks, decode, _Throttled(progress, n))
    if workers == 1 or not work.worth_helpers():
        while work.decode_last():
            pass
        return work.sorted_failures()
    executor = _executor(pool, workers - 1)
    try:
        for _ in range(workers - 1):
            work.watch(executor.submit(_helper_ready), None)
        while work.busy():
            work.collect(executor, block=not work.decode_last())
    except BaseException:  # a stop request: drop the queued chunks instead of decoding them all first
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    # Nothing is left in flight; a helper still starting up would only make us wait for its imports.
    executor.shutdown(wait=False, cancel_futures=True)
    return work.sorted_failures()


class _Work:
    """The chunks of _decode_all: chunks[front:back] are not handed out yet. The caller takes them from the
    back, helpers from the front. Progress is reported from the calling thread only, so a stop request
    raised by the progress callback arrives where it can cancel the queue."""

    _AHEAD = 2  # chunks queued per running helper, so that it never waits between two

    def __init__(self, chunks: list[list[tuple[int, str]]], decode: Callable[[Sequence[tuple[int, str]]], dict[int, str]],
                 report: _Throttled) -> None:
        self.chunks, self.decode, self.report = chunks, decode, report
        self.front, self.back = 0, len(chunks)
        self.finished: queue.SimpleQueue[tuple[Future, int | None]] = queue.SimpleQueue()
        self.in_flight = 0
        self.failures: dict[int, str] = {}
        self.done = 0
        report(0)

    def worth_helpers(self) -> bool:
        """Decode here for _PROBE_S, then: would the rest take this process longer than _PARALLEL_AFTER_S?"""
        started = time.perf_counter()
        while time.perf_counter() - started < _PROBE_S and self.decode_last():
            pass
        left = sum(len(c) for c in self.chunks[self.front:self.back])
        seconds_per_image = (time.perf_counter() - started) / max(self.done, 1)
        return left * seconds_per_image > _PARALLEL_AFTER_S

    def decode_last(self) -> bool:
        """Decode the last chunk not handed out, here; False when none is left."""
        if self.front >= self.back:
            return False
        self.back -= 1
        self._add(self.decode(self.chunks[self.back]), len(self.chunks[self.back]))
        return True

    def watch(self, future: Future, index: int | None) -> None:
        self.in_flight += 1
        future.add_done_callback(lambda f: self.finished.put((f, index)))  # a pool thread: only hand it over

    def busy(self) -> bool:
        return self.in_flight > 0 or self.front < self.back

    def collect(self, executor: Executor, *, block: bool) -> None:
        """Account for finished helper work and hand the helpers more (waiting up to 0.1 s when `block`)."""
        while True:
            try:
                future, index = self.finished.get(timeout=_PROGRESS_INTERVAL_S) if block else self.finished.get_nowait()
            except queue.Empty:
                return
            block = False
            self.in_flight -= 1
            if isinstance(future.exception(), BrokenExecutor):
                if index is not None:  # a helper that could not start costs speed, never the cache
                    self._add(self.decode(self.chunks[index]), len(self.chunks[index]))
                continue
            if index is not None:
                self._add(future.result(), len(self.chunks[index]))
            self._hand_out(executor, self._AHEAD if index is None else 1)  # a helper is ready, or finished one

    def _hand_out(self, executor: Executor, count: int) -> None:
        for _ in range(min(count, self.back - self.front)):
            try:
                future = executor.submit(self.decode, self.chunks[self.front])
            except BrokenExecutor:  # the chunks stay for the caller
                return
            self.watch(future, self.front)
            self.front += 1

    def _add(self, failures: dict[int, str], count: int) -> None:
        self.failures.update(failures)
        self.done += count
        self.report(self.done)

    def sorted_failures(self) -> dict[int, str]:
        return dict(sorted(self.failures.items()))


def _helper_ready() -> int:
    """The first task of each helper: it returns once the helper runs, and only then is it handed chunks."""
    return os.getpid()


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
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_helper_start, initargs=(os.getpid(),))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare")


def _helper_start(parent: int) -> None:
    """In each helper process. Helpers share the caller's process group, so a Stop (SIGTERM to the group)
    or Ctrl-C reaches them too: they ignore it, and the caller cancels the queue and waits for their
    current chunk. A caller killed outright (kill -9) cannot tell them to stop, so they watch for that."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="watch-parent").start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:  # a helper whose parent died is re-parented
        time.sleep(0.5)
    os._exit(1)


def _worker_count(workers: int | None) -> int:
    if workers:
        if workers < 0:
            raise ValueError(f"workers must be at least 1 (or 0 for every core), got {workers}")
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
