"""engine.data.cache: decode once into images.npy + manifest.csv + intake.json, atomically; detect a stale cache."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import BrokenExecutor, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import class_colour
from PIL import Image

from engine.data import cache
from engine.data.cache import MANIFEST_COLUMNS, is_prepared, load_prepared, prepare
from engine.data.decode import decode_image
from engine.data.intake import IntakeError, scan

ROOT = Path(__file__).resolve().parents[1]


def test_prepare_writes_a_consistent_cache(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=3, size=20)
    record = scan(root)
    out = tmp_path / "cache"
    data = prepare(record, out, image_size=8)
    assert sorted(p.name for p in out.iterdir()) == ["images.npy", "intake.json", "manifest.csv"]  # no temp left
    assert data.images.shape == (9, 8, 8, 3) and data.images.dtype == np.uint8
    assert isinstance(data.images, np.memmap) and not data.images.flags.writeable
    assert data.labels.dtype == np.int64 and data.labels.tolist() == record.label_indices().tolist()
    assert data.classes == ("a", "b", "c") and data.paths == tuple(s.path for s in record.samples)
    assert data.ids == tuple(s.id for s in record.samples) and data.root == record.root
    assert len(data) == 9 and data.image_size == 8
    # Pixel values: image j of class i is a solid known colour.
    assert tuple(data.images[4, 3, 3]) == class_colour(1, 1)
    for i, path in enumerate(data.paths):
        assert np.array_equal(data.images[i], decode_image(root / path, 8))
    assert np.load(out / "images.npy", mmap_mode="r").shape == (9, 8, 8, 3)
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == MANIFEST_COLUMNS and rows[1] == ["0", record.samples[0].id, "a/img_000.png", "a"]
    meta = json.loads((out / "intake.json").read_text())
    assert meta["n_images"] == 9 and meta["image_size"] == 8 and len(meta["fingerprint"]) == 64
    assert meta["counts"] == {"a": 3, "b": 3, "c": 3} and meta["skipped"] == []


def test_decode_failures_are_dropped_and_recorded(tmp_path, make_image_folder, make_truncated):
    root = make_image_folder(tmp_path / "data", per_class=3)
    make_truncated(root / "cat" / "cut.jpg", "JPEG")  # passes the header check, fails to decode
    (root / "dog" / "text.png").write_text("no")  # skipped by the scan already
    record = scan(root, check="header")
    assert len(record.samples) == 7
    data = prepare(record, tmp_path / "cache", image_size=6)
    assert len(data) == 6 and "cat/cut.jpg" not in data.paths
    reasons = {s.path: s.reason for s in data.skipped}
    assert reasons == {"cat/cut.jpg": "truncated file", "dog/text.png": reasons["dog/text.png"]}
    assert reasons["dog/text.png"].startswith("not an image")
    meta = json.loads((tmp_path / "cache" / "intake.json").read_text())
    assert meta["n_images"] == 6 and meta["n_scanned"] == 7 and meta["decode_failures"] == 1
    assert meta["counts"] == {"cat": 3, "dog": 3}
    assert [data.paths[i].split("/")[0] for i in range(6)] == [data.classes[k] for k in data.labels]


def test_prepare_refuses_when_one_class_is_left(tmp_path, make_image_folder, make_truncated):
    root = make_image_folder(tmp_path / "data", per_class=2)
    for p in list((root / "dog").iterdir()):
        p.unlink()
        make_truncated(p.with_suffix(".jpg"), "JPEG")
    record = scan(root, check="header")
    out = tmp_path / "cache"
    with pytest.raises(IntakeError, match="after decoding, only one class has usable images"):
        prepare(record, out, image_size=4)
    assert list(out.iterdir()) == []  # nothing half-written is left behind


def test_is_prepared_tracks_the_record_and_the_size(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    record = scan(root)
    out = tmp_path / "cache"
    assert not is_prepared(out, record, 8)
    prepare(record, out, image_size=8)
    assert is_prepared(out, record, 8)
    assert not is_prepared(out, record, 16)
    stamp = (root / "cat" / "img_000.png").stat()
    os.utime(root / "cat" / "img_000.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert not is_prepared(out, record, 8)  # a file changed since
    (out / "images.npy").unlink()
    assert not is_prepared(out, scan(root), 8)


def test_rerun_replaces_an_old_cache(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "cache"
    prepare(scan(root), out, image_size=8)
    make_image_folder(root, classes=("eel",), per_class=2)
    record = scan(root)
    data = prepare(record, out, image_size=4)
    assert data.images.shape == (6, 4, 4, 3) and data.classes == ("cat", "dog", "eel")
    assert is_prepared(out, record, 4)


def test_load_prepared_errors(tmp_path, make_image_folder):
    with pytest.raises(FileNotFoundError, match="run prepare first"):
        load_prepared(tmp_path / "nothing")
    out = tmp_path / "cache"
    prepare(scan(make_image_folder(tmp_path / "data", per_class=2)), out, image_size=4)
    text = (out / "manifest.csv").read_text().splitlines()
    (out / "manifest.csv").write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(IntakeError, match="inconsistent: images.npy has 4 images, manifest.csv 3 rows"):
        load_prepared(out)
    (out / "manifest.csv").write_text("\n".join(text).replace(",dog\n", ",wolf\n", 1) + "\n")
    with pytest.raises(IntakeError, match="unknown label"):
        load_prepared(out)
    (out / "images.npy").write_bytes(b"garbage")
    with pytest.raises(IntakeError, match="damaged"):
        load_prepared(out)


def test_progress_is_throttled_and_finishes(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=150, size=8)
    calls: list[tuple[float, int, int]] = []
    prepare(scan(root, check="header"), tmp_path / "c", image_size=4, workers=2,
            progress=lambda d, t: calls.append((time.monotonic(), d, t)))
    assert calls[0][1:] == (0, 300) and calls[-1][1:] == (300, 300)
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and len(calls) < 300 // 16  # fewer calls than decoded chunks
    gaps = [b[0] - a[0] for a, b in zip(calls[:-2], calls[1:-1], strict=True)]  # the final call is always made
    assert all(g >= 0.099 for g in gaps), gaps


def _photos(root, n: int, make_truncated) -> None:
    """n random-pixel pictures of varied sizes and formats in three classes, and one truncated JPEG."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(9, 40, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}{('.png', '.jpg')[i % 2]}")
    make_truncated(root / "b" / "cut.jpg", "JPEG")


def test_every_worker_count_and_pool_writes_the_same_bytes(tmp_path, make_truncated, helpers_at_once):
    _photos(tmp_path / "data", 150, make_truncated)
    record = scan(tmp_path / "data", check="header")
    one = prepare(record, tmp_path / "w1", image_size=7, workers=1)
    assert len(one) == 150 and [s.path for s in one.skipped] == ["b/cut.jpg"]  # rows repacked without it
    expected = (tmp_path / "w1" / "images.npy").read_bytes()
    for name, kwargs in (("p2", {"workers": 2}), ("p3", {"workers": 3}), ("auto", {"workers": 0}),
                         ("t2", {"workers": 2, "pool": "thread"})):
        data = prepare(record, tmp_path / name, image_size=7, **kwargs)
        assert (tmp_path / name / "images.npy").read_bytes() == expected, name
        assert data.paths == one.paths and data.skipped == one.skipped
    with pytest.raises(ValueError, match="pool must be"):
        prepare(record, tmp_path / "x", image_size=5, pool="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be at least 1"):
        prepare(record, tmp_path / "x", image_size=5, workers=-2)


def _recording_decoder(monkeypatch, seconds: float = 0.0) -> list[tuple[str, int]]:
    """Replace the chunk decoder with one that records (thread name, first row) and may be slow."""
    calls: list[tuple[str, int]] = []
    real = cache._decode_rows

    def decode(npy, root, jobs, size, max_pixels):
        calls.append((threading.current_thread().name, jobs[0][0]))
        time.sleep(seconds)
        return real(npy, root, jobs, size, max_pixels)

    monkeypatch.setattr(cache, "_decode_rows", decode)
    return calls


@pytest.fixture
def helpers_at_once(monkeypatch):
    """Start helpers for any dataset, however small (normally only when decoding would take seconds)."""
    monkeypatch.setattr(cache, "_PARALLEL_AFTER_S", 0.0)
    monkeypatch.setattr(cache, "_PROBE_S", 0.0)


def test_the_caller_and_the_helpers_share_the_chunks(tmp_path, make_image_folder, monkeypatch, helpers_at_once):
    record = scan(make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=160, size=8), check="header")
    calls = _recording_decoder(monkeypatch, seconds=0.02)
    data = prepare(record, tmp_path / "c", image_size=4, workers=3, pool="thread")
    firsts = sorted(first for _, first in calls)
    assert firsts == list(range(0, 320, 16))  # 20 chunks of 16, each decoded exactly once
    here = {first for name, first in calls if name == "MainThread"}
    helpers = {first for name, first in calls if name.startswith("prepare")}
    assert here and helpers and here.isdisjoint(helpers)
    assert min(here) > max(helpers)  # the caller takes from the back, the helpers from the front
    assert tuple(data.images[0, 0, 0]) == class_colour(0, 0) and tuple(data.images[319, 0, 0]) == class_colour(1, 159)


def test_small_datasets_start_no_helper(tmp_path, make_image_folder, monkeypatch):
    record = scan(make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=40, size=8), check="header")
    monkeypatch.setattr(cache, "_executor", lambda pool, workers: pytest.fail("a helper was started"))
    assert len(prepare(record, tmp_path / "c", image_size=4, workers=8)) == 80
    slow = _recording_decoder(monkeypatch, seconds=0.2)  # now the work left looks long: helpers are worth it
    monkeypatch.setattr(cache, "_PARALLEL_AFTER_S", 0.5)
    with pytest.raises(pytest.fail.Exception, match="a helper was started"):
        prepare(record, tmp_path / "d", image_size=4, workers=2)
    assert len(slow) >= 1


def test_a_stop_request_cancels_the_queued_chunks(tmp_path, make_image_folder, monkeypatch, helpers_at_once):
    record = scan(make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=160, size=8), check="header")
    calls = _recording_decoder(monkeypatch, seconds=0.12)  # longer than the 0.1 s progress throttle

    def progress(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt  # what the engine's progress callback raises for a Stop

    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        prepare(record, out, image_size=4, workers=2, pool="thread", progress=progress)
    assert len(calls) <= 4  # the first chunk here, the helper's current and queued one at most: not all 20
    assert list(out.iterdir()) == []  # no temp file, no cache marker left


@pytest.mark.parametrize("how", ["at start", "on a chunk", "on submit"])
def test_broken_helpers_cost_speed_not_the_cache(tmp_path, make_image_folder, monkeypatch, how, helpers_at_once):
    record = scan(make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=100, size=8), check="header")
    expected = prepare(record, tmp_path / "one", image_size=4, workers=1)

    class Broken(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            if how != "at start" and fn is cache._helper_ready:
                return super().submit(fn, *args, **kwargs)
            if how == "on submit":
                raise BrokenExecutor("the pool broke")
            future: Future = Future()
            future.set_exception(BrokenExecutor("helper died"))
            return future

    monkeypatch.setattr(cache, "_executor", lambda pool, workers: Broken(workers))
    data = prepare(record, tmp_path / "broken", image_size=4, workers=4)
    assert np.array_equal(data.images, expected.images) and len(data) == 200


def test_a_helper_exits_when_its_parent_is_gone():
    # A helper of a caller killed with kill -9 would otherwise wait on its queue forever (it ignores SIGTERM).
    code = "from engine.data.cache import _exit_with; _exit_with(-1); print('still here')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and "still here" not in done.stdout


def test_prepare_command_takes_a_worker_count(tmp_path, make_image_folder, capsys):
    from engine.cli import main

    root = make_image_folder(tmp_path / "data", per_class=3)
    assert main(["prepare", str(root), "--out", str(tmp_path / "c"), "--image-size", "8", "--workers", "2"]) == 0
    assert "prepared 6 images of 2 classes at 8x8 px" in capsys.readouterr().out
    assert load_prepared(tmp_path / "c").images.shape == (6, 8, 8, 3)
    assert main(["prepare", str(root), "--out", str(tmp_path / "d"), "--workers", "-1"]) == 2
    assert "workers must be at least 1 (or 0 for every core), got -1" in capsys.readouterr().err


def test_labels_with_commas_and_quotes_round_trip(tmp_path, make_image_folder):
    weird = ('say "hi", then', "plain")
    root = make_image_folder(tmp_path / "data", classes=weird, per_class=2)
    out = tmp_path / "cache"
    prepare(scan(root), out, image_size=4)
    data = load_prepared(out)
    assert data.classes == tuple(sorted(weird)) and data.paths[0] == 'plain/img_000.png'
    assert [data.classes[k] for k in data.labels] == ["plain", "plain", weird[0], weird[0]]
