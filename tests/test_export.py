"""Export of corrected labels: decision precedence, statuses, formula injection, odd names, safety."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from engine.decisions import DecisionStore
from engine.export import ExportError, corrected_labels, export_labels, safe_folder_name
from engine.runs import RunDir, atomic_write_json

ROWS = [  # path, given, suggested, flagged
    ("cat/1.png", "cat", "dog", 1),  # human keeps cat
    ("cat/2.png", "cat", "dog", 1),  # flagged, undecided -> auto-relabeled
    ("dog/3.png", "dog", "dog", 0),  # unchanged
    ("dog/4.png", "dog", "cat", 1),  # human relabels to =SUM(A1)
    ("dog/5.png", "dog", "cat", 0),  # human discards
    ("dog/6.png", "dog", "dog", 1),  # flagged but suggestion == given -> unchanged
    ("dog/7.png", "dog", "cat", 1),  # human accepts suggestion (relabel cat)
]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    root = tmp_path / "data"
    for path, *_ in ROWS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"img:" + path.encode())
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder"})
    pd.DataFrame(
        [{"path": p, "given_label": g, "suggested_label": s, "flagged": f, "clean_prob": 0.2 if f else 0.9}
         for p, g, s, f in ROWS]
    ).to_csv(run.samples, index=False)
    store = DecisionStore(run.decisions)
    store.decide(["cat/1.png"], "keep", "cat")
    store.decide(["dog/4.png"], "relabel", "=SUM(A1)")
    store.decide(["dog/5.png"], "discard")
    store.decide(["dog/7.png"], "relabel", "cat")
    return run


def test_precedence_and_statuses(run: RunDir) -> None:
    t = corrected_labels(run.path).set_index("path")
    assert t.loc["cat/1.png", ["label", "status"]].tolist() == ["cat", "kept"]
    assert t.loc["cat/2.png", ["label", "status"]].tolist() == ["dog", "auto-relabeled"]
    assert t.loc["dog/3.png", ["label", "status"]].tolist() == ["dog", "unchanged"]
    assert t.loc["dog/4.png", ["label", "status"]].tolist() == ["=SUM(A1)", "relabeled"]
    assert t.loc["dog/5.png", ["label", "status"]].tolist() == ["", "discarded"]
    assert t.loc["dog/6.png", ["label", "status"]].tolist() == ["dog", "unchanged"]
    assert t.loc["dog/7.png", ["label", "status"]].tolist() == ["cat", "relabeled"]
    assert (t["original_label"] == [r[1] for r in ROWS]).all()
    assert t.loc["cat/1.png", "decided_at"] != "" and t.loc["cat/2.png", "decided_at"] == ""


def test_csv_defuses_formulas(run: RunDir, tmp_path: Path) -> None:
    out = export_labels(run.path, tmp_path / "labels.csv", "csv")
    e = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("path")
    assert e.loc["dog/4.png", "label"] == "'=SUM(A1)"
    assert list(e.columns[:3]) == ["label", "original_label", "status"]
    assert len(e) == len(ROWS)


def test_json_keeps_exact_labels(run: RunDir, tmp_path: Path) -> None:
    out = export_labels(run.path, tmp_path / "labels.json", "json")
    records = {r["path"]: r for r in json.loads(out.read_text())}
    assert records["dog/4.png"]["label"] == "=SUM(A1)"
    assert records["dog/5.png"]["label"] is None and records["dog/5.png"]["status"] == "discarded"


def test_folder_export_sorts_copies_and_leaves_out_discarded(run: RunDir, tmp_path: Path) -> None:
    out = export_labels(run.path, tmp_path / "sorted", "folder")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["=SUM(A1)/4.png", "cat/1.png", "cat/7.png", "dog/2.png", "dog/3.png", "dog/6.png"]
    assert (out / "cat" / "7.png").read_bytes() == b"img:dog/7.png"
    listing = pd.read_csv(out / "labels.csv", dtype=str)
    assert len(listing) == 6 and set(listing["source_path"]) == {p for p, *_ in ROWS} - {"dog/5.png"}
    assert (tmp_path / "data" / "dog" / "7.png").exists()  # source untouched


def test_folder_export_refuses_to_touch_the_source(run: RunDir, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="overlaps the source images"):
        export_labels(run.path, tmp_path / "data" / "sorted", "folder")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_labels(run.path, tmp_path / "data", "folder")
    with pytest.raises(ExportError, match="never overwrites"):
        export_labels(run.path, tmp_path / "data" / "cat" / "1.png", "csv")
    assert (tmp_path / "data" / "cat" / "1.png").read_bytes() == b"img:cat/1.png"


@pytest.mark.parametrize(("label", "expected"), [("a/b", "a_b"), ("..", "__"), (".", "_"), ("è猫", "è猫"),
                                                 ("x\\y:z", "x_y_z"), ("", "_"), (".hidden", "_hidden")])
def test_safe_folder_names(label: str, expected: str) -> None:
    assert safe_folder_name(label) == expected


def test_unknown_format_and_missing_run(tmp_path: Path, run: RunDir) -> None:
    with pytest.raises(ExportError, match="unknown export format"):
        export_labels(run.path, tmp_path / "x", "xml")
    with pytest.raises(ExportError, match="no samples.csv"):
        corrected_labels(tmp_path / "empty")


def test_numeric_labels_and_paths_stay_exact(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("-1/a.png", "+1/b.png", "-x/c.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder"})
    pd.DataFrame([{"path": "-1/a.png", "given_label": "-1", "suggested_label": "+1", "flagged": 1, "clean_prob": 0.1},
                  {"path": "+1/b.png", "given_label": "+1", "suggested_label": "+1", "flagged": 0, "clean_prob": 0.9},
                  {"path": "-x/c.png", "given_label": "-x", "suggested_label": "-x", "flagged": 0, "clean_prob": 0.9}]
                 ).to_csv(run.samples, index=False)
    e = pd.read_csv(export_labels(run.path, tmp_path / "l.csv", "csv"), dtype=str, keep_default_na=False)
    assert e["path"].tolist() == ["-1/a.png", "+1/b.png", "-x/c.png"]
    assert e["label"].tolist() == ["+1", "+1", "'-x"] and e["original_label"].tolist() == ["-1", "+1", "'-x"]
