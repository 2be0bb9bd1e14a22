"""Export the corrected labels of a run: CSV, JSON, or a re-sorted copy of the image folder.

The corrected label of an image is, in this order: the human decision (keep / relabel; discarded
images get no label; a skip, "unsure", is no decision), else — for a flagged image — the suggested label
when the policy allows an automatic change, else the given label. The policy (`--auto-relabel`):

    confident  (default) change a label automatically only where the worker found the evidence clears the
               bar measured to be right at least 95 % of the time on the benchmark cases (samples.csv
               column `auto_relabel`, engine.method.relabel); every other flagged image keeps its given
               label and is marked `needs-review`. So an export without review never makes labels worse
               where the bar holds, and changes nothing where the model is too weak to be trusted.
    never      no automatic change: flagged images keep their label, marked `needs-review`.
    all        the suggestion for every flagged image (the behaviour before the bar existed; measured to
               make labels worse on clean, low-noise and photo data — for people who review the export).

`status` says which rule applied: kept, relabeled, discarded, auto-relabeled (changed because the evidence
cleared the bar, or by `all`), needs-review (flagged, label not changed) or unchanged.
A `keep` always exports the given label; a relabel to a class the run does not have is refused.

Two options leave images out (status, no label; a folder export does not copy them):

    drop_duplicates (`--drop-duplicates`)  duplicate-dropped: every member but the first of each group of
               copies (samples.csv `duplicate_group`) whose exported labels agree. A group whose labels
               still disagree is a label error to review first: all its members stay.
    drop_outliers Q (`--drop-outliers Q`)  outlier-dropped: images whose `outlier_score` is Q or more,
               unless a person kept or relabeled them.

The export files carry `duplicate_group`, `duplicate_conflict` and `outlier_score` (engine.method.evidence);
a run written before those columns existed exports -1, 0 and an empty score.

What the export writes never replaces what it did not write:

* CSV/JSON files are never written inside the run folder or over the run's source data; an existing file
  is replaced only with `overwrite=True` (`--overwrite`), and a device, named pipe, socket or symbolic
  link at OUT is refused even then (the file is written beside OUT and moved into place, so `/dev/null`
  would otherwise become a regular file);
* a folder export goes to a new or empty folder; `overwrite=True` replaces only an earlier folder export
  (a folder whose files are exactly those its labels.csv lists). File names too long for the target
  file system (PC_NAME_MAX) are shortened, keeping their extension and staying unique.

This module imports no torch (the app calls it).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

import pandas as pd

from engine.data.files import link_or_copy, safe_folder_name
from engine.errors import UserError
from engine.filekind import describe
from engine.review.decisions import ACTIONS, Decision, load_decisions
from engine.review.findings import evidence_of
from engine.review.queue import flag_budget
from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir

EXPORT_COLUMNS = ("path", "label", "original_label", "status", "suggested_label", "clean_prob", "flagged", "decided_at",
                  "duplicate_group", "duplicate_conflict", "outlier_score")
LEFT_OUT = ("discarded", "duplicate-dropped", "outlier-dropped")  # statuses without a label
FORMATS = ("csv", "json", "folder")
AUTO_RELABEL = ("confident", "never", "all")  # export --auto-relabel; the first is the default
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
LISTING = "labels.csv"  # the listing inside a folder export
LISTING_COLUMNS = ("path", "label", "source_path")
_DEFAULT_NAME_MAX = 255  # bytes; where the file system does not say (ext4, XFS, APFS, NTFS all take 255)


class ExportError(UserError):
    """An export that would be unsafe (overwrite source data) or cannot be made."""


def corrected_labels(run_dir: Path, *, auto_relabel: str = AUTO_RELABEL[0], top: int | None = None,
                     drop_duplicates: bool = False, drop_outliers: float | None = None) -> pd.DataFrame:
    """One row per image with the corrected label and how it was decided (EXPORT_COLUMNS).

    auto_relabel: which flagged images take their suggestion without a human decision (module docstring).
    top: a flag budget, only the N most suspicious flagged images stay flagged (engine.review.queue).
    drop_duplicates, drop_outliers: leave copies and outliers out (module docstring).
    """
    if auto_relabel not in AUTO_RELABEL:
        raise ExportError(f"--auto-relabel must be one of {', '.join(AUTO_RELABEL)}, got {auto_relabel!r}")
    if drop_outliers is not None and not 0.0 <= drop_outliers <= 1.0:
        raise ExportError(f"--drop-outliers must be an outlier_score between 0 and 1 (e.g. 0.99), got {drop_outliers}")
    run = RunDir(run_dir)
    if not run.samples.exists():
        raise ExportError(f"{run.path} has no samples.csv yet: run `python -m engine fit` first")
    s = pd.read_csv(run.samples, dtype={"path": str, "given_label": str, "suggested_label": str}, keep_default_na=False)
    try:
        decisions = load_decisions(run.decisions)  # without skips: a skipped image exports as an unreviewed one
    except UserError as e:  # a foreign or corrupt store: reported like every other export problem
        raise ExportError(str(e)) from e
    flagged = s["flagged"].astype(int).astype(bool) if "flagged" in s else pd.Series(False, index=s.index)
    flagged = flag_budget(run.path, s, flagged, top)  # --top N, the flag budget: engine.review.queue
    suggested = s["suggested_label"] if "suggested_label" in s else s["given_label"]
    allowed = _automatic(s, flagged, auto_relabel)
    classes = _run_classes(run, s["given_label"], suggested)
    labels, statuses, decided_at = [], [], []
    for path, given, sugg, flag, auto in zip(s["path"], s["given_label"], suggested, flagged, allowed, strict=True):
        d = decisions.get(path)
        if d is not None:
            label, status = _decided_label(d, given, classes)
            decided = d.decided_at
        elif flag and sugg != given and auto:
            label, status, decided = sugg, "auto-relabeled", ""
        elif flag:
            label, status, decided = given, "needs-review", ""
        else:
            label, status, decided = given, "unchanged", ""
        labels.append(label)
        statuses.append(status)
        decided_at.append(decided)
    table = pd.DataFrame({
        "path": s["path"],
        "label": labels,
        "original_label": s["given_label"],
        "status": statuses,
        "suggested_label": suggested,
        "clean_prob": s["clean_prob"] if "clean_prob" in s else 1.0,
        "flagged": flagged.astype(int),
        "decided_at": decided_at,
        **evidence_of(s),
    })
    if drop_outliers is not None:
        reviewed = table["status"].isin(("kept", "relabeled"))
        out = (table["outlier_score"] >= drop_outliers) & ~reviewed & ~table["status"].isin(LEFT_OUT)
        table.loc[out, ["label", "status"]] = ["", "outlier-dropped"]
    if drop_duplicates:
        table.loc[redundant_copies(table), ["label", "status"]] = ["", "duplicate-dropped"]
    return table


def redundant_copies(table: pd.DataFrame) -> pd.Series:
    """Per row: a copy to leave out, every member but the first (row order) still in the export of a
    duplicate group whose exported labels agree."""
    present = table[(table["duplicate_group"] >= 0) & ~table["status"].isin(LEFT_OUT)]
    agree = present.groupby("duplicate_group")["label"].transform("nunique") == 1
    later = present.groupby("duplicate_group").cumcount() > 0
    drop = pd.Series(False, index=table.index)
    drop[present.index[(agree & later).to_numpy()]] = True
    return drop


def _automatic(s: pd.DataFrame, flagged: pd.Series, policy: str) -> pd.Series:
    """Per image: may its label change without a human decision? `confident` trusts only the worker's
    `auto_relabel` column (a run written before the bar existed has none: nothing changes by itself)."""
    if policy == "all":
        return flagged
    if policy == "never" or "auto_relabel" not in s:
        return pd.Series(False, index=s.index)
    return s["auto_relabel"].astype(int).astype(bool) & flagged


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


def export_labels(run_dir: Path, out: Path, fmt: str, *, overwrite: bool = False,
                  auto_relabel: str = AUTO_RELABEL[0], top: int | None = None,
                  drop_duplicates: bool = False, drop_outliers: float | None = None) -> Path:
    """Write the corrected labels of `run_dir` to `out` in `fmt` (csv, json or folder); returns `out`.

    overwrite: replace an existing regular file (csv, json) or an earlier folder export (folder); without
    it an existing OUT is refused. Nothing that is not a regular file or a folder is ever replaced.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    root = _source_root(run_dir)
    _refuse_unsafe_target(out, run_dir, root, fmt, overwrite)
    table = corrected_labels(run_dir, auto_relabel=auto_relabel, top=top, drop_duplicates=drop_duplicates,
                             drop_outliers=drop_outliers)
    if fmt == "csv":
        _write_new_file(out, _to_csv(table).encode("utf-8"), overwrite)
    elif fmt == "json":
        records = table.to_dict(orient="records")
        for r in records:
            r["label"] = r["label"] or None  # discarded: null, not ""
            r["outlier_score"] = None if pd.isna(r["outlier_score"]) else r["outlier_score"]  # JSON has no NaN
        _write_new_file(out, (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode("utf-8"), overwrite)
    else:
        _write_folder(table, root, out, overwrite)
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


def _refuse_unsafe_target(out: Path, run_dir: Path, root: Path | None, fmt: str, overwrite: bool) -> None:
    mode = _lstat_mode(out)
    if mode is not None and stat.S_ISLNK(mode):
        # Replacing the link would leave its target as it is; writing through it could reach anything.
        raise ExportError(f"{out} is a symbolic link; give the path of a new {'folder' if fmt == 'folder' else 'file'}")
    if fmt == "folder":
        _refuse_folder_target(out, mode, overwrite)
        if root is not None and (_inside(out, root) or _inside(root, out)):
            raise ExportError(f"{out} overlaps the source images in {root}; export to a folder outside it")
        return
    if mode is not None and stat.S_ISDIR(mode):
        raise ExportError(f"{out} is a folder; give a file name such as labels.{fmt}")
    _refuse_protected_file(out, run_dir)
    if mode is None:
        return
    if not stat.S_ISREG(mode):  # /dev/null, a named pipe, a socket: never replaced, --overwrite or not
        raise ExportError(f"{out} is {describe(mode)}, not a regular file; the export never writes to one: "
                          "give the path of a new file")
    if not overwrite:
        raise ExportError(f"{out} already exists; give a new file name, or add --overwrite to replace it")


def _refuse_folder_target(out: Path, mode: int | None, overwrite: bool) -> None:
    if mode is None or (stat.S_ISDIR(mode) and not any(out.iterdir())):
        return
    if overwrite and stat.S_ISDIR(mode):
        problem = _not_a_folder_export(out)
        if problem is None:
            return
        raise ExportError(f"{out} is not an earlier folder export ({problem}); --overwrite replaces only one of "
                          "those: choose a new folder")
    replace_hint = ", or add --overwrite to replace an earlier export" if stat.S_ISDIR(mode) else ""
    raise ExportError(f"{out} already exists and is not an empty folder; choose a new folder{replace_hint}")


def _lstat_mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _not_a_folder_export(folder: Path) -> str | None:
    """Why `folder` is not a tree this module wrote (class folders + a listing of exactly their files), or None."""
    listing = folder / LISTING
    if _lstat_mode(listing) is None or not stat.S_ISREG(_lstat_mode(listing) or 0):
        return f"no {LISTING}"
    try:
        with open(listing, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return f"{LISTING} is not readable"
    if not rows or tuple(rows[0]) != LISTING_COLUMNS:
        return f"{LISTING} does not start with {','.join(LISTING_COLUMNS)}"
    listed = {r[0] for r in rows[1:] if r}
    found: set[str] = set()
    for entry in folder.rglob("*"):
        rel = entry.relative_to(folder).as_posix()
        mode = entry.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            return f"{rel} is {describe(mode)}"
        found.add(rel)
    extra = sorted(found - listed - {LISTING})
    if extra:
        return f"{extra[0]} is not in its {LISTING}"
    return None


def _write_new_file(out: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` beside `out` and move it into place: a reader never sees half a file.

    Without `overwrite` the file is published with a hard link, which fails if something appeared at
    `out` since it was checked (a rename would silently replace it). The file gets the permissions of any
    file the user creates (the umask applies); a replaced file's permissions are kept.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            mode = _lstat_mode(out)
            if mode is not None and stat.S_ISREG(mode):
                os.chmod(tmp, stat.S_IMODE(mode))
            os.replace(tmp, out)
        else:
            _publish_without_replacing(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_without_replacing(tmp: Path, out: Path) -> None:
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise ExportError(f"{out} already exists; give a new file name, or add --overwrite to replace it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links (FAT, some network mounts): the check above is all there is.
        if _lstat_mode(out) is not None:
            raise ExportError(f"{out} already exists; give a new file name, or add --overwrite to replace it") from None
        os.replace(tmp, out)


def _write_folder(table: pd.DataFrame, root: Path | None, out: Path, overwrite: bool) -> None:
    if root is None or not root.is_dir():
        raise ExportError("the run's source images are not available any more; folder export needs them")
    kept = table[~table["status"].isin(LEFT_OUT)]
    out.parent.mkdir(parents=True, exist_ok=True)
    name_max = _name_max(out.parent)
    folders = _class_folders(sorted(kept["label"].unique()), name_max)
    # A fresh folder of our own next to OUT (same file system, so the final rename is atomic): nothing that
    # already exists is ever removed, except an earlier export that `overwrite` asked to replace (checked).
    # The tree is built one level down so it gets normal permissions, not mkdtemp's owner-only ones.
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        tmp = partial / out.name
        tmp.mkdir()
        _fill_folder(kept, folders, root, tmp, name_max)
        if overwrite and out.is_dir() and any(out.iterdir()):
            problem = _not_a_folder_export(out)  # again: it may have changed while the tree was built
            if problem is not None:
                raise ExportError(f"{out} is not an earlier folder export any more ({problem}); choose a new folder")
            out.rename(partial / "replaced")  # removed with `partial` below, once the new tree is in place
        elif out.is_dir():
            out.rmdir()  # empty, checked above; fails rather than remove anything that appeared since
        os.replace(tmp, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _class_folders(labels: list[str], name_max: int) -> dict[str, str]:
    """The folder of each label: made safe, short enough for the file system, never the listing's name."""
    folders: dict[str, str] = {}
    taken = {LISTING}
    for label in labels:
        base, k = safe_folder_name(label), 1
        name = _fit_name(base, "", name_max)
        while name in taken:  # two labels that defuse to the same name stay apart
            k += 1
            name = _fit_name(base, f"_{k}", name_max)
        taken.add(name)
        folders[label] = name
    return folders


def _fill_folder(kept: pd.DataFrame, folders: dict[str, str], root: Path, tmp: Path, name_max: int) -> None:
    rows = []
    for path, label in zip(kept["path"], kept["label"], strict=True):
        src = root / path
        folder = tmp / folders[label]
        folder.mkdir(exist_ok=True)
        dst = _free_name(folder, Path(path).name, name_max)
        try:
            link_or_copy(src, dst)
        except FileNotFoundError as e:
            raise ExportError(f"{src} is missing: the source images changed since the fit; "
                              "restore it or fit the data again") from e
        except OSError as e:  # a full disk, a path over the system's length limit, ...
            raise ExportError(f"cannot write {dst} ({e.strerror or e}); nothing was exported") from e
        rows.append({"path": dst.relative_to(tmp).as_posix(), "label": label, "source_path": path})
    listing = pd.DataFrame(rows, columns=list(LISTING_COLUMNS))
    listing["label"] = listing["label"].map(_defuse)  # the same formula defusing as the CSV format
    listing.to_csv(tmp / LISTING, index=False)


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system holding `folder` accepts."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX
    return limit if limit > 0 else _DEFAULT_NAME_MAX


def _free_name(folder: Path, name: str, name_max: int) -> Path:
    """`folder/name`, or the first free `stem_2.ext`, `stem_3.ext`, ...; the stem is cut to fit `name_max`."""
    suffix = Path(name).suffix
    if len(os.fsencode(suffix)) > name_max // 2:  # no real extension: cut the whole name instead
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    k = 1
    while True:
        candidate = folder / _fit_name(stem, (f"_{k}" if k > 1 else "") + suffix, name_max)
        if not os.path.lexists(candidate):
            return candidate
        k += 1


def _fit_name(stem: str, tail: str, name_max: int) -> str:
    """stem + tail, the stem cut at a character boundary so that the name takes at most `name_max` bytes."""
    budget = name_max - len(os.fsencode(tail))
    if len(os.fsencode(stem)) <= budget:
        return stem + tail
    kept, used = [], 0
    for ch in stem:
        size = len(os.fsencode(ch))
        if used + size > budget:
            break
        kept.append(ch)
        used += size
    return "".join(kept) + tail
