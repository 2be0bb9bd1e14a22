"""engine.data.noise: exact per-class counts, never the same class, the CIFAR mappings, pair flips, reproducibility."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.intake import DatasetRecord, scan
from engine.data.noise import (
    CIFAR10_CLASSES,
    NoiseResult,
    check_output_folder,
    cifar10_mapping,
    cifar100_mapping,
    class_folders,
    digits_mapping,
    flip_count,
    inject_noise,
    load_mapping,
    write_noisy_copy,
)
from engine.errors import UserError
from engine.review.metrics import find_truth, load_truth


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _manifest_record(data: Path, labels: list[str], per_label: int = 3) -> DatasetRecord:
    """A CSV-manifest data set: any label text, `per_label` images each."""
    data.mkdir()
    rows = ["path,label"]
    for i in range(len(labels) * per_label):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(data / f"{i}.png")
        rows.append(f"{i}.png,{labels[i % len(labels)]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return scan(data / "labels.csv")


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
def test_symmetric_exact_counts_and_never_the_same_class(rate):
    counts = [100, 37, 250, 9, 64]
    labels = _labels(counts)
    classes = [f"c{i}" for i in range(5)]
    res = inject_noise(labels, classes=classes, kind="symmetric", rate=rate, seed=3)
    assert res.noisy_labels.shape == labels.shape and res.noisy_labels.dtype == np.int64
    assert np.array_equal(res.flipped, res.noisy_labels != labels)
    for c, n in enumerate(counts):
        assert res.flipped[labels == c].sum() == int(np.floor(rate * n))
        assert res.per_class_rate[f"c{c}"] == pytest.approx(int(np.floor(rate * n)) / n)
    assert res.noisy_labels.min() >= 0 and res.noisy_labels.max() < 5


def test_symmetric_targets_are_uniform_over_the_other_classes():
    labels = _labels([20_000, 10, 10, 10])  # class 0 spreads over 1, 2 and 3
    res = inject_noise(labels, classes=list("abcd"), kind="symmetric", rate=0.6, seed=0)
    targets = res.noisy_labels[res.flipped & (labels == 0)]
    assert len(targets) == 12_000 and 0 not in targets
    shares = np.bincount(targets, minlength=4)[1:] / len(targets)
    assert np.all(np.abs(shares - 1 / 3) < 0.02)


def test_flip_count_floors_without_float_surprises():
    assert flip_count(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996 in floating point
    assert flip_count(0.2, 178) == 35 and flip_count(0.4, 9) == 3 and flip_count(0.0, 50) == 0


def test_reproducible_and_seed_dependent():
    labels = _labels([50, 50, 50])
    a = inject_noise(labels, classes="xyz", kind="symmetric", rate=0.4, seed=7)
    b = inject_noise(labels, classes="xyz", kind="symmetric", rate=0.4, seed=7)
    c = inject_noise(labels, classes="xyz", kind="symmetric", rate=0.4, seed=8)
    assert np.array_equal(a.noisy_labels, b.noisy_labels)
    assert not np.array_equal(a.noisy_labels, c.noisy_labels)


def test_cifar10_mapping_by_name_in_any_order():
    shuffled = ["truck", "cat", "airplane", "dog", "bird", "frog", "horse", "ship", "deer", "automobile"]
    m = cifar10_mapping(shuffled)
    by_name = {shuffled[s]: shuffled[t] for s, t in m.items()}
    assert by_name == {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    official = cifar10_mapping(CIFAR10_CLASSES)
    assert official == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    with pytest.raises(ValueError, match="lacks: 'airplane', 'automobile'"):
        cifar10_mapping(["bird", "cat", "deer", "dog", "horse", "truck"])


def test_asymmetric_selects_from_true_labels_without_double_flips():
    labels = _labels([100] * 10)
    res = inject_noise(labels, classes=CIFAR10_CLASSES, kind="asymmetric", rate=0.4, seed=0,
                       mapping=cifar10_mapping(CIFAR10_CLASSES))
    for c in range(10):
        flipped = res.flipped[labels == c].sum()
        assert flipped == (40 if c in (9, 2, 4, 3, 5) else 0)
    assert np.all(res.noisy_labels[res.flipped & (labels == 3)] == 5)  # every flipped cat is a "dog"
    assert np.all(res.noisy_labels[res.flipped & (labels == 5)] == 3)  # and every flipped dog a "cat"
    assert res.rate == pytest.approx(0.2)


def test_pair_flips_to_the_next_class():
    labels = _labels([30, 30, 30, 30])
    res = inject_noise(labels, classes="abcd", kind="pair", rate=0.5, seed=1)
    assert np.all(res.noisy_labels[res.flipped] == (labels[res.flipped] + 1) % 4)
    assert all(res.flipped[labels == c].sum() == 15 for c in range(4))


def test_cifar100_mapping_shifts_inside_blocks_of_five():
    m = cifar100_mapping(100)
    assert m[0] == 1 and m[3] == 4 and m[4] == 0 and m[5] == 6 and m[9] == 5 and m[99] == 95
    assert all(s // 5 == t // 5 and s != t for s, t in m.items()) and len(m) == 100
    labels = _labels([10] * 100)
    res = inject_noise(labels, classes=[str(i) for i in range(100)], kind="asymmetric", rate=0.3, seed=0, mapping=m)
    assert all(res.flipped[labels == c].sum() == 3 for c in range(100))
    with pytest.raises(ValueError, match="multiple of 5"):
        cifar100_mapping(12)


def test_digits_mapping_covers_every_digit():
    m = digits_mapping([str(d) for d in range(10)])
    assert sorted(m) == list(range(10)) and all(s != t for s, t in m.items())
    assert m[1] == 7 and m[7] == 1 and m[4] == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.0}, r"rate must be in \[0, 1\)"),
        ({"rate": -0.1}, r"rate must be in \[0, 1\)"),
        ({"kind": "asymmetric"}, "needs a mapping"),
        ({"kind": "asymmetric", "mapping": {0: 0}}, "to itself"),
        ({"kind": "asymmetric", "mapping": {0: 9}}, "outside"),
        ({"mapping": {0: 1}}, "asymmetric noise only"),
        ({"kind": "random"}, "kind must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"classes": "abc", "kind": "symmetric", "rate": 0.2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        inject_noise(_labels([5, 5, 5]), **args)


def test_load_mapping_names_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.csv").write_bytes(b"source,target\ncaf\xe9,dog\n")
    with pytest.raises(UserError, match=r"the mapping file .*latin1\.csv is not UTF-8 text: save it as UTF-8"):
        load_mapping(tmp_path / "latin1.csv", ["café", "dog"])


def test_load_mapping_refuses_a_named_pipe(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    outcome: list[BaseException] = []

    def read() -> None:  # in a daemon thread: a regression blocks there instead of hanging the suite
        try:
            load_mapping(tmp_path / "pipe.csv", ["a", "b"])
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, "load_mapping blocked on a named pipe"
    assert isinstance(outcome[0], UserError) and "pipe.csv is not a regular file" in str(outcome[0])


def test_load_mapping_csv_and_json(tmp_path):
    classes = ["cat", "dog", "eel, the"]
    (tmp_path / "m.csv").write_text('source,target\ncat,dog\n"eel, the",cat\n')
    assert load_mapping(tmp_path / "m.csv", classes) == {0: 1, 2: 0}
    (tmp_path / "m.json").write_text(json.dumps({"dog": "cat"}))
    assert load_mapping(tmp_path / "m.json", classes) == {1: 0}
    (tmp_path / "bad.json").write_text(json.dumps({"dog": "wolf"}))
    with pytest.raises(ValueError, match="lacks: 'wolf'"):
        load_mapping(tmp_path / "bad.json", classes)
    (tmp_path / "bad.csv").write_text("from,to\ncat,dog\n")
    with pytest.raises(ValueError, match="source,target"):
        load_mapping(tmp_path / "bad.csv", classes)
    (tmp_path / "twice.csv").write_text('source,target\ncat,dog\ncat,"eel, the"\n')
    with pytest.raises(ValueError, match="lists class 'cat' as a source twice"):
        load_mapping(tmp_path / "twice.csv", classes)


# ----------------------------------------------------------------------------- noisy copies


def test_write_noisy_copy(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=10)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    record = scan(root)
    res = inject_noise(record.label_indices(), classes=record.classes, kind="symmetric", rate=0.3, seed=0)
    out = write_noisy_copy(record, res, tmp_path / "noisy")
    with open(out / "noise.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and list(rows[0]) == ["path", "true_label", "noisy_label"]
    assert sum(r["true_label"] != r["noisy_label"] for r in rows) == 9
    for r in rows:
        assert r["path"].split("/")[0] == r["noisy_label"] and (out / r["path"]).is_file()
    noisy_record = scan(out)
    assert noisy_record.counts() == {c: int((res.noisy_labels == i).sum()) for i, c in enumerate(record.classes)}
    assert noisy_record.ignored == 1  # noise.csv
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # the source is untouched


def test_name_clashes_get_the_image_id(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=2)  # a/img_000.png, b/img_000.png
    record = scan(root)
    everything_to_a = NoiseResult(np.zeros(4, np.int64), record.label_indices() != 0, {"a": 0.0, "b": 1.0})
    out = write_noisy_copy(record, everything_to_a, tmp_path / "noisy")
    paths = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    b0 = next(s for s in record.samples if s.path == "b/img_000.png")
    b1 = record.samples[3]
    moved = [f"a/img_000_{b0.id[:8]}.png", f"a/img_001_{b1.id[:8]}.png"]
    assert paths == sorted(["a/img_000.png", "a/img_001.png", *moved])


def test_output_folder_rules(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    with pytest.raises(ValueError, match="inside the data folder"):
        check_output_folder(root / "noisy", root)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        check_output_folder(tmp_path / "full", root)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", root)
    record = scan(root)
    res = inject_noise(record.label_indices(), classes=record.classes, kind="symmetric", rate=0.5, seed=0)
    assert (write_noisy_copy(record, res, tmp_path / "empty") / "noise.csv").exists()
    with pytest.raises(ValueError, match="not empty"):
        write_noisy_copy(record, res, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x.txt"]


def test_labels_that_look_like_paths_never_leave_the_output(tmp_path: Path) -> None:
    """A CSV manifest may carry any label text; as a folder name it must stay one component inside OUT."""
    from PIL import Image

    from engine.data.intake import scan
    from engine.data.noise import inject_noise, write_noisy_copy

    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label"]
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(data / f"{i}.png")
        rows.append(f"{i}.png,{'../../evil' if i % 2 else 'a/b'}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    record = scan(data / "labels.csv")
    result = inject_noise(record.label_indices(), classes=record.classes, kind="symmetric", rate=0.34, seed=0)
    out = write_noisy_copy(record, result, tmp_path / "out" / "noisy")
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png") if not p.is_relative_to(data)}
    assert written and all(w.startswith("out/noisy/") for w in written)
    assert {p.parent.name for p in out.rglob("*.png")} <= {"___.._evil", "a_b"}


@pytest.mark.parametrize(("labels", "clash"), [(["x/y", "x_y"], "'x/y' and 'x_y'"), ([".x", "_x"], "'.x' and '_x'")])
def test_labels_that_clash_as_folders_are_refused_before_writing(tmp_path, labels, clash):
    record = _manifest_record(tmp_path / "data", labels)
    res = inject_noise(record.label_indices(), classes=record.classes, kind="symmetric", rate=0.34, seed=0)
    folder = labels[1]
    with pytest.raises(UserError, match=f"the classes {clash} would both be written to the folder '{folder}'"):
        write_noisy_copy(record, res, tmp_path / "out" / "noisy")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_label_that_becomes_a_hidden_folder_is_refused():
    with pytest.raises(UserError, match="the class '__MACOSX' would be written to the folder '__MACOSX', which a scan"):
        class_folders(["__MACOSX", "cat"])
    assert class_folders([".", "..", "a/b"]) == {".": "_", "..": "__", "a/b": "a_b"}


def test_noise_csv_labels_are_the_folders_a_rescan_reads(tmp_path):
    record = _manifest_record(tmp_path / "data", [".", "..", "a/b"], per_label=4)
    res = inject_noise(record.label_indices(), classes=record.classes, kind="symmetric", rate=0.5, seed=0)
    out = write_noisy_copy(record, res, tmp_path / "noisy")
    with open(out / "noise.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["true_label"] for r in rows} == {"_", "__", "a_b"}
    assert sum(r["true_label"] != r["noisy_label"] for r in rows) == 6
    rescan = scan(out)
    assert rescan.classes == ("_", "__", "a_b")
    given = {s.path: s.label for s in rescan.samples}
    assert all(given[r["path"]] == r["noisy_label"] for r in rows)
    paths = [s.path for s in rescan.samples]
    truth = load_truth(find_truth(out), paths, rescan.classes)
    true_by_path = {r["path"]: r["true_label"] for r in rows}
    assert truth.tolist() == [true_by_path[p] for p in paths]
    folder_of = {".": "_", "..": "__", "a/b": "a_b"}
    original = {s.id: folder_of[s.label] for s in record.samples}
    assert sorted(original.values()) == sorted(true_by_path.values())  # every true label, as a folder name
