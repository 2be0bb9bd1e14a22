"""engine.data.intake: folders, zips and CSV manifests; every kind of bad input is named, never a crash."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.intake import DatasetRecord, IntakeError, IntakeLimits, sample_id, scan


def _reasons(record: DatasetRecord) -> dict[str, str]:
    return {s.path: s.reason for s in record.skipped}


def _within(seconds: float, call: Callable[[], object]) -> object:
    """Run `call` in a daemon thread: a regression that blocks (a named pipe) fails instead of hanging the suite."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as e:  # handed back to the test
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


# ----------------------------------------------------------------------------- folders


def test_folder_record(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("dog", "cat", "bird"), per_class=3)
    rec = scan(root)
    assert rec.kind == "folder" and rec.root == root.resolve() and rec.source == root.resolve()
    assert rec.classes == ("bird", "cat", "dog")
    assert rec.counts() == {"bird": 3, "cat": 3, "dog": 3}
    assert [s.path for s in rec.samples] == sorted(s.path for s in rec.samples)
    assert rec.samples[0].path == "bird/img_000.png" and rec.samples[0].label == "bird"
    assert rec.samples[0].id == sample_id("bird/img_000.png") and len(rec.samples[0].id) == 16
    labels = rec.label_indices()
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rec.skipped == () and rec.ignored == 0
    report = json.loads(json.dumps(rec.to_report()))
    assert report["n_images"] == 9 and report["classes"] == ["bird", "cat", "dog"] and report["kind"] == "folder"
    assert set(report) == {"source", "kind", "root", "n_images", "classes", "counts", "skipped", "ignored"}


def test_ids_stable_across_rescans_and_new_files(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=3)
    first = {s.path: s.id for s in scan(root).samples}
    Image.new("RGB", (8, 8)).save(root / "cat" / "aaa_new.png")
    second = {s.path: s.id for s in scan(root).samples}
    assert all(second[p] == i for p, i in first.items())
    assert len(set(second.values())) == len(second)


def test_nested_images_take_the_top_level_folder_as_label(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "cat" / "2021" / "summer").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "cat" / "2021" / "summer" / "deep.png")
    rec = scan(root)
    deep = next(s for s in rec.samples if s.path == "cat/2021/summer/deep.png")
    assert deep.label == "cat" and rec.counts() == {"cat": 3, "dog": 2}


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntakeError, match="no usable images found"):
        scan(tmp_path / "empty")


def test_one_class_only(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("cat",), per_class=3)
    with pytest.raises(IntakeError, match="only one class .'cat'. .*at least two classes"):
        scan(root)


def test_images_in_root_without_class_folders(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / f"{i}.png")
    with pytest.raises(IntakeError, match="no class folders found in .*one sub-folder per class"):
        scan(root)


def test_stray_images_beside_class_folders_are_skipped(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    Image.new("RGB", (8, 8)).save(root / "stray.png")
    rec = scan(root)
    assert _reasons(rec) == {"stray.png": "image outside any class folder"} and len(rec.samples) == 4


def test_non_image_and_hidden_files(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "README.md").write_text("about")
    (root / "truth.csv").write_text("path,true_label\n")
    (root / "cat" / "notes.txt").write_text("x")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (root / "cat" / "._img_000.png").write_bytes(b"resource fork")  # macOS AppleDouble
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._x.png").write_bytes(b"junk")
    (root / ".hidden_class").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden_class" / "a.png")
    rec = scan(root)
    assert rec.ignored == 3  # README.md, truth.csv, notes.txt
    assert rec.skipped == () and rec.classes == ("cat", "dog") and len(rec.samples) == 4


def test_bad_files_are_skipped_with_reasons(tmp_path, make_image_folder, make_truncated, make_bomb_png):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "cat" / "zero.png").write_bytes(b"")
    (root / "cat" / "fake.jpg").write_text("I am text, not a JPEG")
    make_truncated(root / "dog" / "cut.png", "PNG")
    make_truncated(root / "dog" / "cut.jpg", "JPEG")
    make_bomb_png(root / "dog" / "bomb.png", 30_000, 30_000)
    rec = scan(root)
    reasons = _reasons(rec)
    assert reasons["cat/zero.png"] == "empty file"
    assert reasons["cat/fake.jpg"].startswith("not an image")
    assert reasons["dog/cut.png"] == "truncated file"
    assert reasons["dog/cut.jpg"] == "truncated file"
    assert reasons["dog/bomb.png"].startswith("decompression bomb: 900000000 pixels > limit")
    assert len(rec.samples) == 4 and [s["path"] for s in rec.to_report()["skipped"]] == sorted(reasons)


def test_header_check_is_lighter_but_still_catches_broken_headers(tmp_path, make_image_folder, make_truncated):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "cat" / "fake.jpg").write_text("text")
    make_truncated(root / "dog" / "cut.jpg", "JPEG")
    header = scan(root, check="header")
    assert set(_reasons(header)) == {"cat/fake.jpg"}  # a cut JPEG needs a full decode to notice
    assert set(_reasons(scan(root, check="full"))) == {"cat/fake.jpg", "dog/cut.jpg"}


def test_limits(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=3, size=40)
    with pytest.raises(IntakeError, match="holds more than the limit of 4 images for one data set"):
        scan(root, limits=IntakeLimits(max_files=4))
    with pytest.raises(IntakeError, match=r"no usable images found .*\(6 files skipped: 6 decompression bomb\)"):
        scan(root, limits=IntakeLimits(max_image_pixels=1000))
    for name in ("cat", "dog"):
        Image.new("RGB", (10, 10)).save(root / name / "small.png")
    rec = scan(root, limits=IntakeLimits(max_image_pixels=1000))
    assert [s.path for s in rec.samples] == ["cat/small.png", "dog/small.png"]
    assert set(_reasons(rec).values()) == {"decompression bomb: 1600 pixels > limit 1000"}
    cap = (root / "cat" / "small.png").stat().st_size
    big = (root / "cat" / "img_000.png").stat().st_size
    assert big > cap
    rec = scan(root, limits=IntakeLimits(max_file_bytes=cap))
    assert len(rec.samples) == 2
    assert _reasons(rec)["cat/img_000.png"] == f"file too large ({big} bytes > limit {cap})"


def test_fewer_than_two_classes_left_after_skipping(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    for p in (root / "dog").iterdir():
        p.write_text("broken")
    with pytest.raises(IntakeError, match=r"only one class .'cat'.*\(2 files skipped: 2 not an image\)"):
        scan(root)


def test_symlinks_never_followed_out_of_the_root(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "private.png")
    os.symlink(outside / "private.png", root / "cat" / "link_out.png")
    os.symlink(outside, root / "dog" / "folder_link")
    os.symlink(outside, root / "linked_class")
    os.symlink(root / "cat" / "img_000.png", root / "dog" / "link_in.png")  # stays inside: usable
    os.symlink(tmp_path / "nowhere.png", root / "cat" / "broken.png")
    rec = scan(root)
    reasons = _reasons(rec)
    assert reasons["cat/link_out.png"].startswith("symbolic link pointing outside the data folder")
    assert reasons["dog/folder_link"] == "symbolic link to a folder (not followed)"
    assert reasons["linked_class"] == "symbolic link to a folder (not followed)"
    assert reasons["cat/broken.png"] == "broken symbolic link"
    assert "dog/link_in.png" in {s.path for s in rec.samples}
    assert "linked_class" not in rec.classes


def test_unicode_and_spaces_in_names(tmp_path):
    root = tmp_path / "données"
    for name in ("chat noir", "日本 語"):
        (root / name).mkdir(parents=True)
        for f in ("é ü.png", "photo (1).JPG"):
            Image.new("RGB", (8, 8), (9, 9, 9)).save(root / name / f, format="PNG" if f.endswith("png") else "JPEG")
    rec = scan(root)
    assert rec.classes == ("chat noir", "日本 語") and len(rec.samples) == 4
    assert "chat noir/é ü.png" in {s.path for s in rec.samples}
    assert json.loads(json.dumps(rec.to_report(), ensure_ascii=False))["classes"] == ["chat noir", "日本 語"]


def test_names_that_are_not_utf8_are_skipped_not_fatal(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    src = os.fsencode(root / "a" / "img_000.png")
    shutil.copy(src, os.fsencode(root / "a") + b"/bad\xff.png")
    os.mkdir(os.fsencode(root) + b"/caf\xe9")  # a Latin-1 class folder name
    shutil.copy(src, os.fsencode(root) + b"/caf\xe9/img.png")
    shutil.copy(src, os.fsencode(root) + b"/stray\xff.png")
    rec = scan(root)
    assert rec.classes == ("a", "b") and len(rec.samples) == 4
    assert _reasons(rec) == {
        "a/bad\\xff.png": "file name is not valid UTF-8; rename it",
        "caf\\xe9/img.png": "folder name is not valid UTF-8; rename it",
        "stray\\xff.png": "file name is not valid UTF-8; rename it",
    }
    report = json.dumps(rec.to_report(), ensure_ascii=False).encode("utf-8")  # printable: no surrogates left
    assert b"caf\\\\xe9/img.png" in report


def test_a_class_left_with_only_undecodable_names_is_reported(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a",), per_class=2)
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    shutil.copy(os.fsencode(root / "a" / "img_000.png"), os.fsencode(root) + b"/caf\xe9/x.png")
    with pytest.raises(IntakeError, match=r"only one class .'a'.*\(1 files skipped: 1 folder name is not valid UTF-8"):
        scan(root)


@pytest.mark.parametrize("name", ["ff.csv", "ff.zip"])
def test_named_pipe_as_data_is_refused_before_opening(tmp_path, name):
    os.mkfifo(tmp_path / name)
    with pytest.raises(IntakeError, match=f"{name} is not a regular file: give a folder, a .zip or a .csv"):
        _within(10, lambda: scan(tmp_path / name, extract_to=tmp_path / "x"))


def test_link_to_a_named_pipe_inside_the_data_is_skipped(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    os.mkfifo(root / "pipe")
    os.symlink(root / "pipe", root / "cat" / "pipe.png")
    rec = _within(10, lambda: scan(root))
    assert isinstance(rec, DatasetRecord) and _reasons(rec) == {"cat/pipe.png": "not a regular file"}


def test_missing_source_and_unknown_kind(tmp_path):
    with pytest.raises(IntakeError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(IntakeError, match="not a folder, a .zip or a .csv"):
        scan(tmp_path / "data.txt")


# ----------------------------------------------------------------------------- zips


def _zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return zip_path


@pytest.mark.parametrize("prefix", ["", "my data/"])
def test_zip_with_or_without_a_top_folder(tmp_path, make_image_folder, prefix):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b"), per_class=3)
    archive = _zip_folder(folder, tmp_path / "data.zip", prefix)
    rec = scan(archive, extract_to=tmp_path / "x")
    assert rec.kind == "zip" and rec.source == archive.resolve()
    assert rec.root == (tmp_path / "x" / prefix).resolve()
    assert rec.counts() == {"a": 3, "b": 3} and rec.skipped == ()
    assert [s.path for s in rec.samples] == [s.path for s in scan(folder).samples]


def test_zip_top_folder_beside_a_readme_is_still_the_data_root(tmp_path, make_image_folder):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b"), per_class=2)
    archive = _zip_folder(folder, tmp_path / "data.zip", "ds/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("README.txt", "about the data")
    rec = scan(archive, extract_to=tmp_path / "x")
    assert rec.root == (tmp_path / "x" / "ds").resolve() and rec.counts() == {"a": 2, "b": 2}
    with zipfile.ZipFile(archive, "a") as zf:
        zf.write(folder / "a" / "img_000.png", "cover.png")  # an image at the top is data: no descending
    with pytest.raises(IntakeError, match=r"only one class .'ds'."):
        scan(archive, extract_to=tmp_path / "y")


def test_zip_into_a_fresh_temporary_folder_and_reuse(tmp_path, make_image_folder):
    archive = _zip_folder(make_image_folder(tmp_path / "src"), tmp_path / "d.zip")
    first = scan(archive)
    assert first.root.exists() and first.root != tmp_path and len(first.samples) == 8
    again = scan(archive, extract_to=tmp_path / "x")
    stamps = {p: (again.root / p).stat().st_mtime_ns for p in (s.path for s in again.samples)}
    reused = scan(archive, extract_to=tmp_path / "x")  # same zip, same folder: no second extraction
    assert {p: (reused.root / p).stat().st_mtime_ns for p in stamps} == stamps
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(IntakeError, match="not empty"):
        scan(archive, extract_to=tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["keep.txt"]


def test_unusable_zip_leaves_no_temporary_folder(tmp_path, make_image_folder, monkeypatch):
    archive = _zip_folder(make_image_folder(tmp_path / "src", classes=("solo",)), tmp_path / "one.zip")
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    with pytest.raises(IntakeError, match="at least two classes"):
        scan(archive)
    assert list(temp_root.iterdir()) == []


def test_hostile_zip_never_writes_outside(tmp_path, make_image_folder):
    folder = make_image_folder(tmp_path / "src", classes=("a", "b"), per_class=2)
    png = (folder / "a" / "img_000.png").read_bytes()
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, p.relative_to(folder).as_posix())
        zf.writestr("../escaped.png", png)
        zf.writestr("a/../../escaped2.png", png)
        zf.writestr("/tmp/absolute_escape.png", png)
        zf.writestr("C:/windows_escape.png", png)
        zf.writestr("__MACOSX/a/._img_000.png", b"fork")
        link = zipfile.ZipInfo("b/link.png")
        link.external_attr = 0o120777 << 16  # a symbolic link member
        zf.writestr(link, "/etc/passwd")
    assert "../escaped.png" in zipfile.ZipFile(archive).namelist()
    dest = tmp_path / "box" / "x"
    before = set(tmp_path.rglob("*"))
    rec = scan(archive, extract_to=dest)
    created = {p for p in set(tmp_path.rglob("*")) - before}
    assert all(p == dest.parent or p.is_relative_to(dest) for p in created), created
    assert not Path("/tmp/absolute_escape.png").exists()
    reasons = _reasons(rec)
    for name in ("../escaped.png", "a/../../escaped2.png", "/tmp/absolute_escape.png", "C:/windows_escape.png"):
        assert reasons[name].startswith("unsafe path in zip"), name
    assert reasons["b/link.png"] == "symbolic link in zip (not extracted)"
    assert not (dest / "b" / "link.png").exists() and not (dest / "__MACOSX").exists()
    assert rec.counts() == {"a": 2, "b": 2}


def test_zip_bombs_refused_before_extracting(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(30):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", b"x")
    with pytest.raises(IntakeError, match="holds 30 files, more than the limit of 10"):
        scan(many, extract_to=tmp_path / "x1", limits=IntakeLimits(max_zip_members=10))
    assert not (tmp_path / "x1").exists() or not any((tmp_path / "x1").iterdir())
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bmp", bytes(5 * 1024 * 1024))
        zf.writestr("b/zeros.bmp", bytes(5 * 1024 * 1024))
    assert big.stat().st_size < 100_000
    expands = r"would expand to 10\.0 MB, more than the limit of 1\.0 MB .possible zip bomb"
    with pytest.raises(IntakeError, match=expands):
        scan(big, extract_to=tmp_path / "x2", limits=IntakeLimits(max_zip_uncompressed_bytes=1024 * 1024))
    assert not (tmp_path / "x2").exists() or not any((tmp_path / "x2").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip", "many.zip"]  # no half extraction left


def test_zip_size_limit_message_shows_an_excess_that_rounding_would_hide(tmp_path):
    zipped = tmp_path / "just_over.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.bmp", bytes(1024 * 1024 + 1000))  # 1.0 MB, like the limit, once rounded
    with pytest.raises(IntakeError, match=r"would expand to 1049576 bytes, more than the limit of 1048576 bytes"):
        scan(zipped, extract_to=tmp_path / "x", limits=IntakeLimits(max_zip_uncompressed_bytes=1024 * 1024))


def test_zip_name_conflicts_are_skipped_not_fatal(tmp_path):
    png = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(png)
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(png, "a/x.png")
        zf.write(png, "b/x.png")
        zf.writestr("b/sub", b"a file named like a folder")
        zf.write(png, "b/sub/y.png")
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.write(png, "a/x.png")  # the same name twice
    rec = scan(archive, extract_to=tmp_path / "x")
    reasons = _reasons(rec)
    assert reasons["b/sub/y.png"].startswith("cannot be extracted")
    assert reasons["a/x.png"].startswith("duplicate name in zip")
    assert rec.counts() == {"a": 1, "b": 1}


def test_corrupt_zip(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(IntakeError, match="not a readable zip file"):
        scan(tmp_path / "bad.zip", extract_to=tmp_path / "x")


def test_zip_flagged_utf8_with_a_name_that_is_not(tmp_path):
    buf = tmp_path / "good.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/bad\u00e9.png", b"x")  # non-ASCII: written with the UTF-8 flag
        zf.writestr("b/ok.png", b"x")
    broken = buf.read_bytes().replace("bad\u00e9".encode(), b"bad\xff\xfe")  # same length, invalid UTF-8
    (tmp_path / "bad.zip").write_bytes(broken)
    with pytest.raises(IntakeError, match="marks its file names as UTF-8 but holds one that is not: re-create"):
        scan(tmp_path / "bad.zip", extract_to=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_zip_with_unicode_names(tmp_path):
    png = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(png)
    archive = tmp_path / "u.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(png, "chat noir/été 1.png")
        zf.write(png, "日本/b.png")
    rec = scan(archive, extract_to=tmp_path / "x")
    assert rec.classes == ("chat noir", "日本") and rec.samples[0].path == "chat noir/été 1.png"


# ----------------------------------------------------------------------------- CSV manifests


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_manifest(tmp_path, make_image_folder):
    folder = make_image_folder(tmp_path / "imgs", classes=("x", "y"), per_class=2)
    weird = 'a, "quoted" label'
    manifest = _write_csv(
        tmp_path / "labels.csv",
        [
            ["path", "label"],
            ["imgs/x/img_000.png", weird],
            ["imgs/x/img_001.png", weird],
            ["imgs/y/img_000.png", "plain"],
            ["imgs\\y\\img_001.png", "plain"],  # written on Windows
            ["imgs/missing.png", "plain"],
            ["../outside.png", "plain"],
            ["imgs/y/img_000.png", "plain"],
        ],
    )
    rec = scan(manifest)
    assert rec.kind == "csv" and rec.root == tmp_path.resolve()
    assert rec.classes == ("a, \"quoted\" label", "plain") and rec.counts() == {weird: 2, "plain": 2}
    reasons = _reasons(rec)
    assert reasons["imgs/missing.png"] == "file not found"
    assert reasons["../outside.png"].startswith("outside the data folder")
    assert reasons["imgs/y/img_000.png"].startswith("listed twice")
    assert json.loads(json.dumps(rec.to_report()))["classes"][0] == weird
    assert folder.exists()


def test_csv_paths_relative_to_root(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "imgs", classes=("x", "y"), per_class=1)
    rows = [["label", "path"], ["X", "x/img_000.png"], ["Y", "y/img_000.png"]]  # any column order
    rec = scan(_write_csv(tmp_path / "elsewhere.csv", rows), root=tmp_path / "imgs")
    assert rec.root == (tmp_path / "imgs").resolve()
    assert [s.path for s in rec.samples] == ["x/img_000.png", "y/img_000.png"] and rec.classes == ("X", "Y")


def test_csv_paths_through_a_linked_folder_stay_inside(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "root", classes=("x", "y"), per_class=1)
    outside = make_image_folder(tmp_path / "outside", classes=("z",), per_class=1)
    os.symlink(outside / "z", root / "linked")
    manifest = _write_csv(
        root / "m.csv", [["path", "label"], ["x/img_000.png", "x"], ["y/img_000.png", "y"], ["linked/img_000.png", "z"]]
    )
    rec = scan(manifest)
    assert _reasons(rec)["linked/img_000.png"].startswith("symbolic link pointing outside")
    assert rec.classes == ("x", "y")


@pytest.mark.parametrize(
    ("header", "missing"), [(["file", "label"], "'path'"), (["path", "class"], "'label'"), ([], "'path' and 'label'")]
)
def test_csv_missing_columns(tmp_path, header, missing):
    manifest = _write_csv(tmp_path / "m.csv", [header] if header else [])
    with pytest.raises(IntakeError, match=f"has no {missing} column"):
        scan(manifest)


# ----------------------------------------------------------------------------- the bundled sample


def test_bundled_sample_data_scans_to_1797_images_in_10_classes():
    root = Path(__file__).resolve().parents[1] / "sample_data"
    rec = scan(root, check="header")
    assert len(rec.samples) == 1797 and rec.classes == tuple(str(d) for d in range(10))
    assert rec.skipped == () and rec.ignored >= 3  # README.md, truth.csv, build.py
