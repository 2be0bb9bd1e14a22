"""Export the corrected labels of a run: CSV, JSON, or a re-sorted copy of the image folder.

The corrected label of an image is, in this order: the human decision (keep / relabel; discarded
images get no label; a skip, "unsure", is no decision), else the suggested label when the image is
flagged, else the given label.
`status` says which rule applied: kept, relabeled, discarded, auto-relabeled or unchanged.
A `keep` always exports the given label; a relabel to a class the run does not have is refused.
CSV/JSON files are never written inside the run folder or over the run's source data.
This module imports no torch (the app calls it).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from engine.data.files import link_or_copy, safe_folder_name
from engine.errors import UserError
from engine.review.decisions import ACTIONS, Decision, load_decisions
from engine.runs.atomic import atomic_write_text, read_json
from engine.runs.rundir import RunDir

EXPORT_COLUMNS = ("path", "label", "original_label", "status", "suggested_label", "clean_prob", "flagged", "decided_at")
FORMATS = ("csv", "json", "folder")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


class ExportError(UserError):
    """An export that would be unsafe (overwrite source data) or cannot be made."""


def corrected_labels(run_dir: Path) -> pd.DataFrame:
    """One row per image with the corrected label and how it was decided (EXPORT_COLUMNS)."""
    run = RunDir(run_dir)
    if not run.samples.exists():
        raise ExportError(f"{run.path} has no samples.csv yet: run `python -m engine fit` first")
    s = pd.read_csv(run.samples, dtype={"path": str, "given_label": str, "suggested_label": str}, keep_default_na=False)
    try:
        decisions = load_decisions(run.decisions)  # without skips: a skipped image exports as an unreviewed one
    except UserError as e:  # a foreign or corrupt store: reported like every other export problem
        raise ExportError(str(e)) from e
    flagged = s["flagged"].astype(int).astype(bool) if "flagged" in s else pd.Series(False, index=s.index)
    suggested = s["suggested_label"] if "suggested_label" in s else s["given_label"]
    classes = _run_classes(run, s["given_label"], suggested)
    labels, statuses, decided_at = [], [], []
    for path, given, sugg, flag in zip(s["path"], s["given_label"], suggested, flagged, strict=True):
        d = decisions.get(path)
        if d is not None:
            label, status = _decided_label(d, given, classes)
            decided = d.decided_at
        elif flag and sugg != given:
            label, status, decided = sugg, "auto-relabeled", ""
        else:
            label, status, decided = given, "unchanged", ""
        labels.append(label)
        statuses.append(status)
        decided_at.append(decided)
    return pd.DataFrame({
        "path": s["path"],
        "label": labels,
        "original_label": s["given_label"],
        "status": statuses,
        "suggested_label": suggested,
        "clean_prob": s["clean_prob"] if "clean_prob" in s else 1.0,
        "flagged": flagged.astype(int),
        "decided_at": decided_at,
    })


def _run_classes(run: RunDir, given: pd.Series, suggested: pd.Series) -> set[str]:
    """The classes of the run: as recorded by the fit, else (older runs) every given or suggested label."""
    recorded = (read_json(run.source, default={}) or {}).get("classes")
    return set(recorded) if recorded else set(given) | set(suggested)


def _decided_label(d: Decision, given: str, classes: set[str]) -> tuple[str, str]:
    """(label, status) of a reviewed image; refuses a decision that names no class of the run."""
    if d.action not in ACTIONS:
        raise ExportError(f"review decision for {d.path} has unknown action {d.action!r}; review that image again")
    if d.action == "discard":
        return "", "discarded"
    if d.action == "keep":  # keep means the given label, whatever label the row carries
        return given, "kept"
    if d.label not in classes:  # as fine-tuning does: an export must not invent a class
        raise ExportError(f"review decision for {d.path} uses label {d.label!r}, which is not a class of this run; "
                          "review that image again")
    return d.label, ("kept" if d.label == given else "relabeled")


def export_labels(run_dir: Path, out: Path, fmt: str) -> Path:
    """Write the corrected labels of `run_dir` to `out` in `fmt` (csv, json or folder); returns `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    root = _source_root(run_dir)
    _refuse_unsafe_target(out, run_dir, root, fmt)
    table = corrected_labels(run_dir)
    if fmt == "csv":
        atomic_write_text(out, _to_csv(table))
    elif fmt == "json":
        records = table.to_dict(orient="records")
        for r in records:
            r["label"] = r["label"] or None  # discarded: null, not ""
        atomic_write_text(out, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    else:
        _write_folder(table, root, out)
    return out


def _to_csv(table: pd.DataFrame) -> str:
    """CSV with label cells defused against spreadsheet formula injection (OWASP: prefix a quote).

    Paths are left exact (they must match the files), and so are plain numbers such as "-1" or "+1",
    common class names that a spreadsheet reads as numbers, not formulas.
    """
    safe = table.copy()
    for col in ("label", "original_label", "suggested_label"):
        safe[col] = safe[col].map(_defuse)
    return safe.to_csv(index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def _defuse(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _source_root(run_dir: Path) -> Path | None:
    source = read_json(RunDir(run_dir).source, default={}) or {}
    return Path(source["root"]) if source.get("root") else None


def _protected(run_dir: Path) -> list[tuple[Path, str]]:
    """What a CSV/JSON export must never land in: the run folder and every source the run records."""
    source = read_json(RunDir(run_dir).source, default={}) or {}
    places = [(Path(run_dir), f"inside the run folder {run_dir}")]
    for key, what in (("root", "the source data"), ("data", "the source data"), ("truth", "the truth file"),
                      ("test", "the test data")):
        if source.get(key):
            places.append((Path(source[key]), f"inside {what} {source[key]}"))
    return places


def _refuse_protected_file(out: Path, run_dir: Path) -> None:
    # Checked whether or not `out` exists: a new file in the data folder would be scanned as data next time,
    # and one in the run folder may be a file a later stage writes (decisions.sqlite, samples.csv, ...).
    for place, where in _protected(run_dir):
        if _inside(out, place):
            raise ExportError(f"{out} is {where}; the export never writes there: choose a file outside it")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _refuse_unsafe_target(out: Path, run_dir: Path, root: Path | None, fmt: str) -> None:
    if fmt == "folder":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"{out} already exists and is not an empty folder; choose a new folder")
        if root is not None and (_inside(out, root) or _inside(root, out)):
            raise ExportError(f"{out} overlaps the source images in {root}; export to a folder outside it")
    else:
        if out.exists() and out.is_dir():
            raise ExportError(f"{out} is a folder; give a file name such as labels.{fmt}")
        _refuse_protected_file(out, run_dir)


def _write_folder(table: pd.DataFrame, root: Path | None, out: Path) -> None:
    if root is None or not root.is_dir():
        raise ExportError("the run's source images are not available any more; folder export needs them")
    kept = table[table["status"] != "discarded"]
    folders: dict[str, str] = {}
    for label in sorted(kept["label"].unique()):
        name, k = safe_folder_name(label), 1
        while name in folders.values():  # two labels that defuse to the same name stay apart
            k += 1
            name = f"{safe_folder_name(label)}_{k}"
        folders[label] = name
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh folder of our own next to OUT (same file system, so the final rename is atomic): nothing that
    # already exists is ever removed. The tree is built one level down so it gets normal permissions,
    # not mkdtemp's owner-only ones.
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        tmp = partial / out.name
        tmp.mkdir()
        _fill_folder(kept, folders, root, tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _fill_folder(kept: pd.DataFrame, folders: dict[str, str], root: Path, tmp: Path) -> None:
    rows = []
    for path, label in zip(kept["path"], kept["label"], strict=True):
        src = root / path
        dst = tmp / folders[label] / Path(path).name
        dst = _unique(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            link_or_copy(src, dst)
        except FileNotFoundError as e:
            raise ExportError(f"{src} is missing: the source images changed since the fit; "
                              "restore it or fit the data again") from e
        rows.append({"path": dst.relative_to(tmp).as_posix(), "label": label, "source_path": path})
    listing = pd.DataFrame(rows, columns=["path", "label", "source_path"])
    listing["label"] = listing["label"].map(_defuse)  # the same formula defusing as the CSV format
    listing.to_csv(tmp / "labels.csv", index=False)


def _unique(dst: Path) -> Path:
    k = 1
    candidate = dst
    while candidate.exists():
        k += 1
        candidate = dst.with_name(f"{dst.stem}_{k}{dst.suffix}")
    return candidate
