"""Export of corrected labels: decision precedence, statuses, formula injection, odd names, safety."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pandas as pd
import pytest

from engine.review.decisions import DecisionStore
from engine.review.export import ExportError, corrected_labels, export_labels, safe_folder_name
from engine.runs.atomic import atomic_write_json
from engine.runs.rundir import RunDir

ROWS = [  # path, given, suggested, flagged, auto_relabel (the suggestion cleared the worker's bar)
    ("cat/1.png", "cat", "dog", 1, 1),  # human keeps cat
    ("cat/2.png", "cat", "dog", 1, 1),  # flagged, undecided, cleared the bar -> auto-relabeled
    ("dog/3.png", "dog", "dog", 0, 0),  # unchanged
    ("dog/4.png", "dog", "cat", 1, 0),  # human relabels to =SUM(A1)
    ("dog/5.png", "dog", "cat", 0, 0),  # human discards
    ("dog/6.png", "dog", "dog", 1, 0),  # flagged but suggestion == given -> needs-review, label kept
    ("dog/7.png", "dog", "cat", 1, 1),  # human accepts suggestion (relabel cat)
    ("cat/8.png", "cat", "dog", 1, 0),  # flagged, undecided, below the bar -> needs-review, label kept
]


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    root = tmp_path / "data"
    for path, *_ in ROWS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"img:" + path.encode())
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder",
                                   "classes": ["=SUM(A1)", "cat", "dog"]})
    pd.DataFrame(
        [{"path": p, "given_label": g, "suggested_label": s, "flagged": f, "clean_prob": 0.2 if f else 0.9,
          "auto_relabel": a} for p, g, s, f, a in ROWS]
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
    assert t.loc["dog/6.png", ["label", "status"]].tolist() == ["dog", "needs-review"]
    assert t.loc["cat/8.png", ["label", "status"]].tolist() == ["cat", "needs-review"]
    assert t.loc["dog/7.png", ["label", "status"]].tolist() == ["cat", "relabeled"]
    assert (t["original_label"] == [r[1] for r in ROWS]).all()
    assert t.loc["cat/1.png", "decided_at"] != "" and t.loc["cat/2.png", "decided_at"] == ""


def test_auto_relabel_policies(run: RunDir) -> None:
    """confident: only what cleared the bar changes; never: nothing; all: every flagged suggestion."""
    def undecided(policy: str) -> list[list[str]]:
        t = corrected_labels(run.path, auto_relabel=policy).set_index("path")
        return [t.loc[p, ["label", "status"]].tolist() for p in ("cat/2.png", "cat/8.png", "dog/6.png")]

    assert undecided("confident") == [["dog", "auto-relabeled"], ["cat", "needs-review"], ["dog", "needs-review"]]
    assert undecided("never") == [["cat", "needs-review"], ["cat", "needs-review"], ["dog", "needs-review"]]
    assert undecided("all") == [["dog", "auto-relabeled"], ["dog", "auto-relabeled"], ["dog", "needs-review"]]
    with pytest.raises(ExportError, match="--auto-relabel must be one of confident, never, all"):
        corrected_labels(run.path, auto_relabel="sometimes")


def test_a_run_without_the_bar_changes_nothing_by_itself(run: RunDir) -> None:
    """samples.csv written before the bar existed has no auto_relabel column: confident changes nothing."""
    pd.read_csv(run.samples).drop(columns=["auto_relabel"]).to_csv(run.samples, index=False)
    t = corrected_labels(run.path).set_index("path")
    assert t.loc["cat/2.png", ["label", "status"]].tolist() == ["cat", "needs-review"]
    assert corrected_labels(run.path, auto_relabel="all").set_index("path").loc["cat/2.png", "label"] == "dog"


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
    assert files == ["=SUM(A1)/4.png", "cat/1.png", "cat/7.png", "cat/8.png", "dog/2.png", "dog/3.png", "dog/6.png"]
    assert (out / "cat" / "7.png").read_bytes() == b"img:dog/7.png"
    listing = pd.read_csv(out / "labels.csv", dtype=str)
    assert len(listing) == 7 and set(listing["source_path"]) == {p for p, *_ in ROWS} - {"dog/5.png"}
    assert (tmp_path / "data" / "dog" / "7.png").exists()  # source untouched


def test_folder_export_refuses_to_touch_the_source(run: RunDir, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="overlaps the source images"):
        export_labels(run.path, tmp_path / "data" / "sorted", "folder")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_labels(run.path, tmp_path / "data", "folder")
    with pytest.raises(ExportError, match="is inside the source data .*never writes there"):
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
    e = pd.read_csv(export_labels(run.path, tmp_path / "l.csv", "csv", auto_relabel="all"), dtype=str,
                    keep_default_na=False)
    assert e["path"].tolist() == ["-1/a.png", "+1/b.png", "-x/c.png"]
    assert e["label"].tolist() == ["+1", "+1", "'-x"] and e["original_label"].tolist() == ["-1", "+1", "'-x"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("name", "fmt"), [("decisions.sqlite", "csv"), ("samples.csv", "json"),
                                           ("source.json", "csv"), ("new_labels.csv", "csv"),
                                           ("checkpoints/x.json", "json")])
def test_file_export_refuses_the_run_folder_and_writes_nothing(run: RunDir, name: str, fmt: str) -> None:
    before = _snapshot(run.path)
    with pytest.raises(ExportError, match=f"is inside the run folder {run.path}; the export never writes there"):
        export_labels(run.path, run.path / name, fmt)
    assert _snapshot(run.path) == before  # decisions, samples and source intact; no new file
    assert DecisionStore(run.decisions).get("dog/4.png").label == "=SUM(A1)"


def test_file_export_refuses_the_source_data_and_the_truth_file(run: RunDir, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "truth.csv").write_text("path,label\ncat/1.png,cat\n")
    truth = tmp_path / "elsewhere" / "truth.csv"
    truth.parent.mkdir()
    truth.write_text("path,label\n")
    atomic_write_json(run.source, {**json.loads(run.source.read_text()), "truth": str(truth)})
    before = _snapshot(data)
    for out, fmt in ((data / "truth.csv", "csv"), (data / "labels.json", "json"), (data / "cat" / "new.csv", "csv")):
        with pytest.raises(ExportError, match=f"is inside the source data {data}; the export never writes there"):
            export_labels(run.path, out, fmt)
    with pytest.raises(ExportError, match="is inside the truth file"):
        export_labels(run.path, truth, "csv")
    assert _snapshot(data) == before and truth.read_text() == "path,label\n"


def test_file_export_replaces_an_existing_file_only_with_overwrite(run: RunDir, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "labels.csv"
    export_labels(run.path, out, "csv")
    first = out.read_bytes()
    out.chmod(0o640)
    DecisionStore(run.decisions).decide(["cat/2.png"], "discard")
    with pytest.raises(ExportError, match=r"labels\.csv already exists; give a new file name, or add --overwrite"):
        export_labels(run.path, out, "csv")
    assert out.read_bytes() == first
    export_labels(run.path, out, "csv", overwrite=True)
    e = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("path")
    assert e.loc["cat/2.png", ["label", "status"]].tolist() == ["", "discarded"]
    assert out.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.csv"]  # no temporary file left


def test_a_new_export_file_gets_the_users_permissions(run: RunDir, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = export_labels(run.path, tmp_path / "labels.json", "json")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644  # not the owner-only mode of a temporary file


@pytest.mark.parametrize("overwrite", [False, True])
def test_file_export_never_writes_to_a_pipe_or_a_link(run: RunDir, tmp_path: Path, overwrite: bool) -> None:
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(ExportError, match=r"pipe\.csv is a named pipe, not a regular file; the export never writes"):
        export_labels(run.path, tmp_path / "pipe.csv", "csv", overwrite=overwrite)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.csv").st_mode)
    (tmp_path / "mine.csv").write_text("mine\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "mine.csv")
    with pytest.raises(ExportError, match=r"link\.csv is a symbolic link; give the path of a new file"):
        export_labels(run.path, tmp_path / "link.csv", "csv", overwrite=overwrite)
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "mine.csv").read_text() == "mine\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_folder_export_overwrite_replaces_only_an_earlier_export(run: RunDir, tmp_path: Path) -> None:
    out = export_labels(run.path, tmp_path / "sorted", "folder")
    DecisionStore(run.decisions).decide(["cat/2.png"], "discard")
    with pytest.raises(ExportError, match="already exists and is not an empty folder; choose a new folder, or add"):
        export_labels(run.path, out, "folder")
    export_labels(run.path, out, "folder", overwrite=True)
    assert not (out / "dog" / "2.png").exists() and (out / "dog" / "3.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run", "sorted"]  # old tree gone, no partial left
    (out / "cat" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"is not an earlier folder export \(cat/notes\.txt is not in its labels"):
        export_labels(run.path, out, "folder", overwrite=True)
    assert (out / "cat" / "notes.txt").read_text() == "mine"
    mine = tmp_path / "mine"
    (mine / "x").mkdir(parents=True)
    (mine / "x" / "a.png").write_bytes(b"a")
    with pytest.raises(ExportError, match=r"mine is not an earlier folder export \(no labels\.csv\)"):
        export_labels(run.path, mine, "folder", overwrite=True)
    assert (mine / "x" / "a.png").read_bytes() == b"a"


def test_folder_export_shortens_names_over_the_file_system_limit(tmp_path: Path) -> None:
    root = tmp_path / "d"
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long_a = "a" * (limit - 4) + ".png"  # exactly the limit
    long_b = "é" * ((limit - 4) // 2) + ".png"  # two bytes per character
    paths = [f"x/{long_a}", f"y/{long_a}", f"x/{long_b}", f"y/{long_b}"]
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(p.encode())
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder", "classes": ["x", "y"]})
    pd.DataFrame([{"path": p, "given_label": "x", "suggested_label": "x", "flagged": 0, "clean_prob": 0.9}
                  for p in paths]).to_csv(run.samples, index=False)
    out = export_labels(run.path, tmp_path / "sorted", "folder")  # four images, two names, one class
    names = sorted(p.name for p in (out / "x").iterdir())
    assert len(names) == 4 and all(len(os.fsencode(n)) <= limit and n.endswith(".png") for n in names)
    assert long_a in names and long_b in names  # a name that fits is kept as it is
    listing = pd.read_csv(out / "labels.csv", dtype=str)
    assert sorted(listing["source_path"]) == sorted(paths)
    for _, row in listing.iterrows():
        assert (out / row["path"]).read_bytes() == row["source_path"].encode()


def test_folder_labels_csv_defuses_formulas_but_keeps_paths_and_numbers(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("-1/a.png", "=cmd/b.png", "@x/c.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "folder"})
    pd.DataFrame([{"path": p, "given_label": p.split("/")[0], "suggested_label": p.split("/")[0], "flagged": 0,
                   "clean_prob": 0.9} for p in ("-1/a.png", "=cmd/b.png", "@x/c.png")]).to_csv(run.samples, index=False)
    out = export_labels(run.path, tmp_path / "sorted", "folder")
    listing = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False).set_index("source_path")
    assert listing["label"].to_dict() == {"-1/a.png": "-1", "=cmd/b.png": "'=cmd", "@x/c.png": "'@x"}
    assert listing.loc["=cmd/b.png", "path"] == "=cmd/b.png" and (out / "=cmd" / "b.png").exists()


def test_folder_export_leaves_an_unrelated_partial_folder_alone(run: RunDir, tmp_path: Path) -> None:
    mine = tmp_path / ".sorted.partial"
    (mine / "keep").mkdir(parents=True)
    (mine / "keep" / "notes.txt").write_text("mine")
    out = export_labels(run.path, tmp_path / "sorted", "folder")
    assert (mine / "keep" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sorted.partial", "data", "run", "sorted"]
    assert (out / "labels.csv").exists() and (out.stat().st_mode & 0o777) != 0o700  # normal folder permissions


def test_folder_export_with_a_vanished_image_fails_cleanly(run: RunDir, tmp_path: Path) -> None:
    (tmp_path / "data" / "dog" / "6.png").unlink()
    with pytest.raises(ExportError, match=r"dog/6\.png is missing: the source images changed since the fit"):
        export_labels(run.path, tmp_path / "sorted", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no OUT, no partial folder left


def test_keep_always_exports_the_given_label(run: RunDir) -> None:
    store = DecisionStore(run.decisions)
    store.decide(["cat/2.png"], "keep", "dog")  # a keep row carrying another label
    store.decide(["dog/3.png"], "keep", "dog")
    with sqlite3.connect(run.decisions) as con:
        con.execute("UPDATE decisions SET label = NULL WHERE path = 'dog/3.png'")  # a keep row with no label
    t = corrected_labels(run.path).set_index("path")
    assert t.loc["cat/2.png", ["label", "status"]].tolist() == ["cat", "kept"]
    assert t.loc["dog/3.png", ["label", "status"]].tolist() == ["dog", "kept"]


def test_relabel_to_a_class_the_run_lacks_is_refused(run: RunDir, tmp_path: Path) -> None:
    DecisionStore(run.decisions).decide(["cat/2.png"], "relabel", "wolf")
    with pytest.raises(ExportError, match=r"review decision for cat/2\.png uses label 'wolf', which is not a class"):
        export_labels(run.path, tmp_path / "labels.csv", "csv")
    assert not (tmp_path / "labels.csv").exists()
    with sqlite3.connect(run.decisions) as con:
        con.execute("UPDATE decisions SET label = NULL WHERE path = 'cat/2.png'")
    with pytest.raises(ExportError, match=r"cat/2\.png uses label None"):
        corrected_labels(run.path)


def test_a_corrupt_decision_store_stops_the_export_and_is_left_as_is(run: RunDir, tmp_path: Path) -> None:
    for p in run.path.glob("decisions.sqlite*"):
        p.unlink()
    run.decisions.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ExportError, match=r"decisions\.sqlite is not a CLeaN decision store \(not an SQLite"):
        export_labels(run.path, tmp_path / "labels.csv", "csv")
    assert run.decisions.read_bytes() == b"\x00garbage" * 100 and not (tmp_path / "labels.csv").exists()


def test_cli_export_into_the_run_folder_is_one_error_line(run: RunDir, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    before = run.decisions.read_bytes()
    assert main(["export", str(run.path), "--out", str(run.decisions)]) == 2
    assert "is inside the run folder" in capsys.readouterr().err
    assert run.decisions.read_bytes() == before


def test_a_skipped_image_exports_like_an_unreviewed_one(run: RunDir, tmp_path: Path) -> None:
    store = DecisionStore(run.decisions)
    store.decide(["cat/2.png", "dog/3.png", "cat/1.png"], "skip", source="t")  # flagged, unflagged, was kept
    t = corrected_labels(run.path).set_index("path")
    assert t.loc["cat/2.png", ["label", "status", "decided_at"]].tolist() == ["dog", "auto-relabeled", ""]
    assert t.loc["dog/3.png", ["label", "status", "decided_at"]].tolist() == ["dog", "unchanged", ""]
    assert t.loc["cat/1.png", ["label", "status", "decided_at"]].tolist() == ["dog", "auto-relabeled", ""]
    export_labels(run.path, tmp_path / "labels.json", "json")
    records = {r["path"]: r for r in json.loads((tmp_path / "labels.json").read_text())}
    assert (records["cat/2.png"]["status"], records["cat/2.png"]["decided_at"]) == ("auto-relabeled", "")
    assert store.get("cat/2.png").action == "skip"  # the answer itself is kept


def test_folder_export_shortens_long_class_names_and_keeps_them_apart(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for name in ("1.png", "2.png", "3.png"):
        (root / "a" / name).write_bytes(name.encode())
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    cat, cat2 = "猫" * 110, "猫" * 110 + "x"  # 330 bytes each: over the limit, the same once cut
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_json(run.source, {"data": str(root), "root": str(root), "kind": "csv",
                                   "classes": [cat, cat2, "labels.csv"]})
    pd.DataFrame([{"path": "a/1.png", "given_label": cat, "suggested_label": cat, "flagged": 0, "clean_prob": 0.9},
                  {"path": "a/2.png", "given_label": cat2, "suggested_label": cat2, "flagged": 0, "clean_prob": 0.9},
                  {"path": "a/3.png", "given_label": "labels.csv", "suggested_label": "labels.csv", "flagged": 0,
                   "clean_prob": 0.9}]).to_csv(run.samples, index=False)
    out = export_labels(run.path, tmp_path / "sorted", "folder")
    listing = pd.read_csv(out / "labels.csv", dtype=str).set_index("source_path")
    folders = {p: listing.loc[p, "path"].split("/")[0] for p in ("a/1.png", "a/2.png", "a/3.png")}
    assert len(set(folders.values())) == 3 and all(len(os.fsencode(f)) <= limit for f in folders.values())
    assert folders["a/3.png"] == "labels.csv_2" and (out / "labels.csv").is_file()  # the listing keeps its name
    assert listing.loc["a/1.png", "label"] == cat and listing.loc["a/2.png", "label"] == cat2


# ----------------------------------------------------------------------------- copies and outliers


def _with_evidence(run: RunDir, groups: list[int], conflict: list[int], scores: list[float]) -> None:
    s = pd.read_csv(run.samples, keep_default_na=False)
    s["duplicate_group"], s["duplicate_conflict"], s["outlier_score"] = groups, conflict, scores
    s.to_csv(run.samples, index=False)


def test_a_run_from_before_the_evidence_columns_exports_no_group_and_no_score(run: RunDir, tmp_path: Path) -> None:
    t = corrected_labels(run.path)
    assert t["duplicate_group"].tolist() == [-1] * len(ROWS) and t["duplicate_conflict"].tolist() == [0] * len(ROWS)
    assert t["outlier_score"].isna().all()
    records = json.loads(export_labels(run.path, tmp_path / "l.json", "json").read_text())
    assert records[0]["duplicate_group"] == -1 and records[0]["outlier_score"] is None
    # nothing to leave out: every option changes nothing
    dropped = corrected_labels(run.path, drop_duplicates=True, drop_outliers=0.5)
    assert dropped["status"].tolist() == t["status"].tolist()


def test_drop_duplicates_keeps_one_image_per_group_whose_labels_agree(run: RunDir, tmp_path: Path) -> None:
    # group 0: dog/3 and dog/6 (both export dog); group 1: cat/8 and cat/2 (cat vs auto-relabeled dog: disagree)
    _with_evidence(run, [-1, 1, 0, -1, -1, 0, -1, 1], [0, 1, 0, 0, 0, 0, 0, 1], [0.1] * 8)
    t = corrected_labels(run.path, drop_duplicates=True).set_index("path")
    assert t.loc["dog/3.png", ["label", "status"]].tolist() == ["dog", "unchanged"]  # the first member stays
    assert t.loc["dog/6.png", ["label", "status"]].tolist() == ["", "duplicate-dropped"]
    assert t.loc["cat/2.png", "status"] == "auto-relabeled" and t.loc["cat/8.png", "status"] == "needs-review"
    assert (t["status"] == "duplicate-dropped").sum() == 1
    assert t.loc["dog/6.png", "duplicate_group"] == 0 and t.loc["cat/2.png", "duplicate_conflict"] == 1
    out = export_labels(run.path, tmp_path / "folder", "folder", drop_duplicates=True)
    assert "dog/6.png" not in pd.read_csv(out / "labels.csv")["source_path"].tolist()


def test_drop_outliers_discards_unreviewed_images_at_or_above_q(run: RunDir) -> None:
    _with_evidence(run, [-1] * 8, [0] * 8, [0.995, 0.99, 0.5, 1.0, 0.2, 0.98, 0.3, 0.1])
    t = corrected_labels(run.path, drop_outliers=0.99).set_index("path")
    assert t.index[t["status"] == "outlier-dropped"].tolist() == ["cat/2.png"]  # cat/1 (0.995) and dog/4 were decided
    assert t.loc["cat/2.png", "label"] == ""
    assert t.loc["cat/1.png", "status"] == "kept" and t.loc["dog/4.png", "status"] == "relabeled"
    assert (corrected_labels(run.path, drop_outliers=0.98)["status"] == "outlier-dropped").sum() == 2


def test_drop_outliers_outside_0_1_is_one_error(run: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main as cli_main

    with pytest.raises(ExportError, match="between 0 and 1"):
        corrected_labels(run.path, drop_outliers=99)
    assert cli_main(["export", str(run.path), "--out", str(tmp_path / "l.csv"), "--drop-outliers", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err and not (tmp_path / "l.csv").exists()
