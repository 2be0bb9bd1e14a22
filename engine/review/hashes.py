"""sha256 of image files: the content key that review decisions follow across runs.

A re-uploaded, renamed or moved image keeps its bytes, so it keeps its sha256 and the decisions made on
it (engine.review.memory). Files are read in 1 MiB chunks, so memory stays bounded for any file size,
in a few threads (hashlib releases the GIL while it hashes, and the reads overlap).

`image_hashes` keeps the result in the run's `RUN/data/sha256.csv` (`path,sha256,size,mtime_ns`) and,
on a later call, hashes again only the files whose size or modification time changed. A file that is
missing or unreadable gets no hash: its decisions then match by path alone. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from engine.runs.atomic import atomic_write_text
from engine.runs.rundir import RunDir

HASH_COLUMNS = ("path", "sha256", "size", "mtime_ns")
CHUNK_BYTES = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
Progress = Callable[[int, int], None]
_MAX_WORKERS = 4  # reads and hashing overlap well with a few threads; more only contend for the disk


@dataclass(frozen=True)
class FileHash:
    path: str  # POSIX, relative to the data root
    sha256: str
    size: int
    mtime_ns: int


def sha256_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of the bytes of `path`, read `chunk_bytes` at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def hash_files(
    root: Path,
    paths: Sequence[str],
    *,
    known: Mapping[str, FileHash] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> dict[str, FileHash]:
    """Hash `root / p` for every p in `paths`.

    Args:
        known: earlier hashes; one whose file still has the same size and modification time is reused.
        progress: called as progress(done, total) after each file, and once at the start.
        workers: threads (default: up to 4, never more than the CPUs this process may use).

    Returns:
        path -> FileHash, without the files that are missing or unreadable.
    """
    known = known or {}
    out: dict[str, FileHash] = {}
    todo: list[tuple[str, os.stat_result]] = []
    for p in paths:
        try:
            st = os.stat(Path(root) / p)
        except OSError:
            continue
        old = known.get(p)
        if old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
            out[p] = old
        else:
            todo.append((p, st))
    total, done = len(paths), len(paths) - len(todo)
    if progress:
        progress(done, total)
    with ThreadPoolExecutor(max_workers=_workers(workers), thread_name_prefix="sha256") as pool:
        futures = {pool.submit(sha256_file, Path(root) / p): (p, st) for p, st in todo}
        for future in as_completed(futures):
            p, st = futures[future]
            done += 1
            try:
                out[p] = FileHash(p, future.result(), st.st_size, st.st_mtime_ns)
            except OSError:  # removed or unreadable since the stat: no hash, matched by path alone
                pass
            if progress:
                progress(done, total)
    return {p: out[p] for p in paths if p in out}


def image_hashes(run_dir: Path, root: Path, paths: Sequence[str], *, progress: Progress | None = None,
                 workers: int | None = None) -> dict[str, str]:
    """path -> sha256 of the run's images under `root`, cached in RunDir.hashes (rewritten when it changed)."""
    run = RunDir(run_dir)
    cached = _read(run.hashes)
    fresh = hash_files(root, paths, known=cached, progress=progress, workers=workers)
    if fresh != cached:
        atomic_write_text(run.hashes, _to_csv(fresh.values()))
    return {p: h.sha256 for p, h in fresh.items()}


def read_hashes(run_dir: Path) -> dict[str, str]:
    """path -> sha256 as the run's cache holds them (no image is read); {} when there is no cache."""
    return {p: h.sha256 for p, h in _read(RunDir(run_dir).hashes).items()}


def _read(path: Path) -> dict[str, FileHash]:
    """The cache file; damaged rows are dropped (their files are hashed again), a missing file is {}."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    out = {}
    for r in rows:
        try:
            h = FileHash(r["path"], r["sha256"], int(r["size"]), int(r["mtime_ns"]))
        except (KeyError, TypeError, ValueError):
            continue
        if h.path and SHA256_HEX.fullmatch(h.sha256):
            out[h.path] = h
    return out


def _to_csv(hashes: Iterable[FileHash]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HASH_COLUMNS)
    for h in hashes:
        writer.writerow([h.path, h.sha256, h.size, h.mtime_ns])
    return buf.getvalue()


def _workers(workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        return workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))
