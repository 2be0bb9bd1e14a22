"""Review decisions out of a run and back in (`python -m engine decisions export|import`).

The file is UTF-8 CSV with the columns `path,sha256,action,label,decided_at,source`, one row per
decided image (skips included); action is keep, relabel, discard or skip, label is empty for discard
and skip. Text cells that a spreadsheet would run as a formula (= + - @ tab CR), and cells starting with
a quote, are written with one more leading quote (as engine.review.export does for labels.csv), and
the import takes exactly that quote off again, so every value comes back as it was.

Export never replaces a file it did not write: an existing --out is refused, unless --overwrite is given
and the file is an earlier decisions export (its first line is the header above); devices, pipes, links
and folders are always refused, and so is a target inside the run or its data. The file appears at once
(temp file + rename).

Import matches each row to an image of the run (RUN/data/manifest.csv) by sha256 first, then by path;
a row whose sha256 names other content than the image at its path is refused. Every row is checked
before anything is written: unknown images, labels that are no class of the run (RUN/source.json), bad
actions, sha256s or times, and two rows giving one image different answers are all reported in one
message with their line numbers. Then the whole file is written in one transaction (source
"import:<file name>"), so the audit log keeps the value each imported decision replaced. Torch-free.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.data.cache import MANIFEST_FILE
from engine.errors import UserError
from engine.review.decisions import ACTIONS, UNLABELLED_ACTIONS, Decision, DecisionStore
from engine.review.export import _FORMULA_START, _NUMBER, _refuse_protected_file
from engine.review.hashes import SHA256_HEX, image_hashes, read_hashes
from engine.review.memory import Memory, open_run_store
from engine.runs.atomic import atomic_write_text, read_json
from engine.runs.rundir import RunDir

DECISION_COLUMNS = ("path", "sha256", "action", "label", "decided_at", "source")
REQUIRED_COLUMNS = ("path", "action")
IMPORT_SOURCE = "import:{name}"
_QUOTED_START = (*_FORMULA_START, "'")
_MAX_LISTED = 20  # refused rows named in the message; the rest are counted
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportResult:
    written: int  # decisions written into the run's store
    replaced: int  # of them, images that had another decision (the old value is in decision_log)
    unchanged: int  # rows that said what the run already had: not written again
    memory_error: str | None  # set when the workspace memory could not record the import


# ------------------------------------------------------------------------------------------- cells


def defuse_cell(value: str) -> str:
    """A text cell made safe to open in a spreadsheet, in a way `restore_cell` undoes exactly."""
    if value.startswith(_QUOTED_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def restore_cell(value: str) -> str:
    """The value `defuse_cell` was given (a hand-made cell without our quote is left as it is)."""
    if value.startswith("'") and value[1:].startswith(_QUOTED_START) and not _NUMBER.fullmatch(value[1:]):
        return value[1:]
    return value


# ------------------------------------------------------------------------------------------- export


def export_decisions(run_dir: Path, out: Path, *, overwrite: bool = False) -> int:
    """Write every current decision of the run (skips included) to `out`; returns how many rows."""
    run = RunDir(run_dir)
    if not run.source.exists() and not run.decisions.exists():
        raise UserError(f"{run.path} holds no run (no source.json, no decisions.sqlite)")
    out = Path(out)
    _refuse_target(out, run.path, overwrite)
    decisions = DecisionStore(run.decisions).all() if run.decisions.exists() else {}
    hashes = read_hashes(run.path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(DECISION_COLUMNS)
    for path in sorted(decisions):
        d = decisions[path]
        writer.writerow([defuse_cell(d.path), d.sha256 or hashes.get(path, ""), d.action,
                         defuse_cell(d.label or ""), d.decided_at, defuse_cell(d.source or "")])
    atomic_write_text(out, buf.getvalue())
    return len(decisions)


def _refuse_target(out: Path, run_dir: Path, overwrite: bool) -> None:
    _refuse_protected_file(out, run_dir)  # never inside the run or the data, as labels.csv
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{out} is a folder; give a file name such as decisions.csv")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{out} is not a regular file (a link, device or pipe); the export writes only a new file "
                        "or replaces its own earlier export")
    if not overwrite:
        raise UserError(f"{out} already exists; choose a new file, or pass --overwrite to replace an earlier "
                        "decisions export")
    if _first_line(out) != ",".join(DECISION_COLUMNS):
        raise UserError(f"{out} is not a decisions export written by CLeaN (its first line is not "
                        f"{','.join(DECISION_COLUMNS)}); it is left as it is: choose another file")


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return f.readline(4096).rstrip("\r\n")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Images:
    """The run's images: given label per path, and the paths of each sha256 (copies share one)."""

    given: dict[str, str]
    hashes: dict[str, str]
    by_sha: dict[str, list[str]]
    classes: set[str]


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    sha256: str
    action: str
    label: str
    decided_at: str


def import_decisions(run_dir: Path, csv_path: Path, *, memory: Memory | None = None, remember: bool = True,
                     progress: Progress | None = None) -> ImportResult:
    """Import a decisions CSV into the run: all of it in one transaction, or nothing (UserError).

    Args:
        memory: where the imported decisions are also remembered (default: the workspace's).
        remember: False keeps them out of the memory.
        progress: progress(done, total) while the run's images are hashed (only when the file has sha256s
            and the run's hash cache lacks some images).
    """
    run = RunDir(run_dir)
    csv_path = Path(csv_path)
    rows = _read_rows(csv_path)
    needs_hashes = any(r.sha256 for r in rows)
    images = _run_images(run, hash_them=needs_hashes, progress=progress)
    decisions, errors = _resolve(rows, images)
    if errors:
        shown = "; ".join(errors[:_MAX_LISTED]) + (f"; and {len(errors) - _MAX_LISTED} more" if len(errors) >
                                                    _MAX_LISTED else "")
        n = len(errors)
        raise UserError(f"{csv_path.name}: {n} {'row' if n == 1 else 'rows'} refused, nothing imported: {shown}")
    if not decisions:
        return ImportResult(0, 0, 0, None)
    store = open_run_store(run.path, memory=memory, remember=remember)
    current = store.all()
    new = [d for d in decisions if (current.get(d.path) is None
                                    or (current[d.path].action, current[d.path].label) != (d.action, d.label))]
    changes = store.put(new, IMPORT_SOURCE.format(name=csv_path.name)) if new else []
    replaced = sum(c.prev_action is not None for c in changes)
    return ImportResult(len(changes), replaced, len(decisions) - len(new), store.memory_error)


def _read_rows(csv_path: Path) -> list[_Row]:
    """The data rows of the file, cells restored; UserError for a file that is not a decisions CSV."""
    try:
        st = os.stat(csv_path)
    except FileNotFoundError:
        raise UserError(f"{csv_path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):  # a pipe or device would block or never end
        raise UserError(f"{csv_path} is not a regular file; give a CSV file with {','.join(DECISION_COLUMNS)}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not UTF-8 text; save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise UserError(f"{csv_path} lacks the columns {', '.join(missing)}: a decisions file has the columns "
                            f"{','.join(DECISION_COLUMNS)}")
        col = {name: header.index(name) for name in DECISION_COLUMNS if name in header}
        rows = []
        line = reader.line_num + 1
        for record in reader:
            if any(cell.strip() for cell in record):
                def cell(name: str, rec: list[str] = record) -> str:
                    i = col.get(name)
                    return rec[i] if i is not None and i < len(rec) else ""

                rows.append(_Row(line, restore_cell(cell("path")), cell("sha256").strip().lower(),
                                 cell("action").strip().lower(), restore_cell(cell("label")),
                                 cell("decided_at").strip()))
            line = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"{csv_path} is not a readable CSV file (line {reader.line_num}: {e})") from None
    return rows


def _run_images(run: RunDir, *, hash_them: bool, progress: Progress | None) -> _Images:
    manifest = run.data / MANIFEST_FILE
    try:
        with open(manifest, encoding="utf-8", newline="") as f:
            given = {r["path"]: r["label"] for r in csv.DictReader(f)}
    except FileNotFoundError:
        raise UserError(f"{run.path} has no decoded images ({manifest} is missing): run `python -m engine fit` "
                        "first") from None
    except (KeyError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{manifest} is damaged ({e}): run `python -m engine fit` again") from None
    source = read_json(run.source, default={}) or {}
    hashes = read_hashes(run.path)
    root = Path(source["root"]) if source.get("root") else None
    if hash_them and root is not None and root.is_dir() and set(given) - set(hashes):
        hashes = image_hashes(run.path, root, list(given), progress=progress)
    by_sha: dict[str, list[str]] = {}
    for path, sha in hashes.items():
        if path in given:
            by_sha.setdefault(sha, []).append(path)
    classes = set(source.get("classes") or given.values())
    return _Images(given, hashes, by_sha, classes)


def _resolve(rows: Sequence[_Row], images: _Images) -> tuple[list[Decision], list[str]]:
    """The decisions the rows make (one per image), and every problem found, as 'line N: ...'."""
    errors: list[str] = []
    chosen: dict[str, tuple[int, Decision]] = {}
    for r in rows:
        problem = _row_problem(r, images)
        if problem:
            errors.append(f"line {r.line}: {problem}")
            continue
        for path in _targets(r, images):
            d = _decision(r, path, images)
            earlier = chosen.get(path)
            if earlier and (earlier[1].action, earlier[1].label) != (d.action, d.label):
                errors.append(f"lines {earlier[0]} and {r.line} give {path!r} different decisions")
                continue
            chosen.setdefault(path, (r.line, d))
    return [d for _, d in chosen.values()], errors


def _row_problem(r: _Row, images: _Images) -> str | None:
    if r.action not in ACTIONS:
        return f"unknown action {r.action!r} (use {', '.join(ACTIONS[:-1])} or {ACTIONS[-1]})"
    if r.sha256 and not SHA256_HEX.fullmatch(r.sha256):
        return f"sha256 {r.sha256!r} is not 64 hex digits"
    if r.decided_at and _utc(r.decided_at) is None:
        return f"decided_at {r.decided_at!r} is not an ISO-8601 time"
    if r.action == "relabel" and not r.label:
        return "relabel needs a label"
    if r.action not in UNLABELLED_ACTIONS and r.label and r.label not in images.classes:
        return f"label {r.label!r} is not a class of this run"
    if not _targets(r, images):
        if r.path in images.given:  # its sha256 is known and differs: other content now lies at that path
            return (f"{r.path!r} now holds other content than the decided image (its sha256 differs); empty the "
                    "sha256 cell to match by path alone")
        return f"no image of this run has the path {r.path!r}" + (" or that sha256" if r.sha256 else "")
    return None


def _targets(r: _Row, images: _Images) -> list[str]:
    """The images a row decides: those with its sha256 (the one at its path if it is one of them), else the
    image at its path unless both sha256s are known and differ."""
    copies = images.by_sha.get(r.sha256, []) if r.sha256 else []
    if copies:
        return [r.path] if r.path in copies else copies
    if r.path not in images.given:
        return []
    known = images.hashes.get(r.path)
    return [] if (r.sha256 and known and known != r.sha256) else [r.path]


def _decision(r: _Row, path: str, images: _Images) -> Decision:
    """The row's decision for `path`: keep where the label is the image's given label (an empty keep label
    means that one), relabel elsewhere, as a review click would."""
    given = images.given[path]
    decided_at = _utc(r.decided_at) or ""
    sha = images.hashes.get(path)
    if r.action in UNLABELLED_ACTIONS:
        return Decision(path, r.action, None, decided_at, sha256=sha)
    label = r.label or given
    return Decision(path, "keep" if label == given else "relabel", label, decided_at, sha256=sha)


def _utc(text: str) -> str | None:
    """`text` as ISO-8601 UTC with milliseconds (a time without zone is taken as UTC), or None."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.isoformat(timespec="milliseconds")
