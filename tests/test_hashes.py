"""sha256 of image files: chunked hashing, progress, and the run's cache (RUN/data/sha256.csv)."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import pytest

from engine.review import hashes
from engine.review.hashes import HASH_COLUMNS, hash_files, image_hashes, read_hashes, sha256_file
from engine.runs.rundir import RunDir


def _files(root: Path, n: int = 5) -> list[str]:
    paths = []
    for i in range(n):
        rel = f"{'cat' if i % 2 else 'dog'}/img {i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([i]) * (1000 + 37 * i))
        paths.append(rel)
    return paths


def test_sha256_in_small_chunks_equals_the_sha256_of_the_whole_file(tmp_path):
    f = tmp_path / "big.bin"
    data = os.urandom(10_000)
    f.write_bytes(data)
    assert sha256_file(f, chunk_bytes=333) == sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_hash_files_reports_progress_and_leaves_out_missing_files(tmp_path):
    paths = _files(tmp_path)
    calls: list[tuple[int, int]] = []
    got = hash_files(tmp_path, [*paths, "dog/gone.png"], progress=lambda d, t: calls.append((d, t)), workers=2)
    assert list(got) == paths  # in the order asked, without the missing file
    assert {p: h.sha256 for p, h in got.items()} == {p: hashlib.sha256((tmp_path / p).read_bytes()).hexdigest()
                                                     for p in paths}
    assert got[paths[1]].size == 1037
    assert calls[0] == (1, 6) and calls[-1] == (6, 6) and len(calls) == 6  # the missing file: nothing to do
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        hash_files(tmp_path, paths, workers=0)


def test_the_run_cache_is_written_once_and_only_changed_files_are_hashed_again(tmp_path, monkeypatch):
    root, run = tmp_path / "data", RunDir(tmp_path / "run")
    paths = _files(root)
    first = image_hashes(run.path, root, paths)
    with open(run.hashes, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == HASH_COLUMNS and [r[0] for r in rows[1:]] == paths
    assert read_hashes(run.path) == first
    stamp = run.hashes.stat().st_mtime_ns

    hashed: list[str] = []
    real = hashes.sha256_file
    monkeypatch.setattr(hashes, "sha256_file", lambda p, chunk_bytes=hashes.CHUNK_BYTES: hashed.append(p) or real(p))
    assert image_hashes(run.path, root, paths) == first
    assert hashed == [] and run.hashes.stat().st_mtime_ns == stamp  # nothing read again, nothing rewritten

    (root / paths[2]).write_bytes(b"edited")
    second = image_hashes(run.path, root, paths)
    assert [Path(p).relative_to(root).as_posix() for p in hashed] == [paths[2]]
    assert second[paths[2]] == hashlib.sha256(b"edited").hexdigest()
    assert {p: h for p, h in second.items() if p != paths[2]} == {p: h for p, h in first.items() if p != paths[2]}


def test_a_damaged_cache_is_hashed_again_instead_of_trusted(tmp_path):
    root, run = tmp_path / "data", RunDir(tmp_path / "run")
    paths = _files(root, 2)
    good = image_hashes(run.path, root, paths)
    run.hashes.write_text("path,sha256,size,mtime_ns\n" + f"{paths[0]},not-a-hash,1,1\n" + "garbage\n")
    assert read_hashes(run.path) == {}
    assert image_hashes(run.path, root, paths) == good
    assert read_hashes(tmp_path / "no-run") == {}
