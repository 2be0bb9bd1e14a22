"""A damaged run is named and repaired, never a traceback.

Every file of a run is written atomically, so a kill never leaves half of one; a file can still be
damaged from outside (a disk that filled up, a copy or sync cut short, garbage written over it). This
module finds such files, says in one sentence which file it is and which command repairs it, and
carries out the repair:

    find_damage(run)   every run file that is there but cannot be what it should be: JSON that does not
                       parse, a .npy/.npz whose headers or size disagree, a checkpoint that is not a
                       complete archive (plus, given `checkpoint_problem`, one torch cannot load with
                       weights_only=True), a samples.csv cut short, a decoded cache that disagrees with
                       itself (engine.data.cache.cache_problem)
    plan(run, damage)  the stages to redo: the stage that wrote each damaged file, and every later stage
                       that reads its outputs or writes the same files (engine.runs.stages' reads and
                       writes), so nothing built on the damaged file stays "done"
    sentence(...)      "checkpoints/train.pt is damaged (...): `python -m engine fit DATA --run-dir RUN
                       --resume` redoes the train stage and the stages that depend on it (...)"
    repair(run, plan)  (holding the run's worker lock) removes the damaged files, forgets the stages to
                       redo and their resume points, and phase (a)'s snapshots when their stage is redone;
                       the decision store is never touched, so every review decision is kept

Which stage wrote a file that several stages write (samples.csv: split, then refresh) is the last of
them that is recorded done. status.json lost the record of what is done, so every stage is redone (the
decoded images are reused when they are intact). config.json is restored by the command layer from a
checkpoint (it needs torch); source.json is written again by `fit`.

This module imports no torch: `python -m engine status` and the app's launcher use it.
"""

from __future__ import annotations

import csv
import io
import shlex
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import config as config_mod
from engine.config import RunConfig
from engine.data.cache import INTAKE_FILE, MISSING, cache_problem
from engine.errors import UserError
from engine.runs import stages
from engine.runs.atomic import (
    DamagedFile,
    load_json,
    npy_header,
    npz_headers,
    open_regular,
    read_json,
    read_regular_bytes,
)
from engine.runs.rundir import RunDir
from engine.runs.stages import FINETUNE, FIT

CheckpointCheck = Callable[[Path], "str | None"]  # a deeper look at a checkpoint (torch's load), or None

# Columns of samples.csv that every reader relies on (the export needs no more; the full list the engine
# writes is in the README).
SAMPLES_COLUMNS = ("path", "given_label")
_MAX_SAMPLES_BYTES = 4 << 30
_SPLIT_KEYS = ("means", "stds", "weights", "threshold")


class DamagedRun(UserError):
    """A command refused because of a damaged run file: the one sentence, and the phase whose command
    (`fit --resume` or `finetune --resume`) repairs it, which a launched worker records in status.json
    (`repair`) for the app's Resume."""

    def __init__(self, message: str, repair: str) -> None:
        super().__init__(message)
        self.repair = repair


@dataclass(frozen=True)
class Damage:
    path: Path
    reason: str  # what is wrong with it, for people
    stage: str | None  # the stage whose redo writes it again; None for config.json and source.json


@dataclass(frozen=True)
class Plan:
    damage: tuple[Damage, ...]
    redo: tuple[str, ...]  # the stages to make not done, in table order
    done: tuple[str, ...]  # of those, the ones recorded done before the repair
    phase: str  # FIT: `fit --resume` repairs it; FINETUNE: `finetune --resume` does

    @property
    def fit_needed(self) -> bool:
        return self.phase == FIT


# ----------------------------------------------------------------------------- snapshots of phase (a)


def snapshots(run: RunDir) -> dict[Path, str]:
    """Phase (a)'s outputs as kept when phase (b) first ran, and the stage each one copies."""
    return {run.predictions_before: "predict", run.samples_before: "split", run.metrics_before: "split"}


def _outputs(run: RunDir, name: str) -> tuple[Path, ...]:
    s = stages.stage(name)
    return (*s.writes(run), *s.keeps(run), *(p for p, owner in snapshots(run).items() if owner == name))


# ----------------------------------------------------------------------------- finding damage


def find_damage(run: RunDir, *, checkpoint_problem: CheckpointCheck | None = None,
                verify: bool = False) -> list[Damage]:
    """Every damaged file of the run, earliest stage first; [] for a healthy run.

    checkpoint_problem: a torch-side check of a checkpoint (engine.train.checkpoint.checkpoint_problem);
        without it a checkpoint is checked as an archive only.
    verify: also check every .npz member's CRC (reads them once).
    """
    found: list[Damage] = []
    try:
        done = _completed(run)
    except DamagedFile as e:
        found.append(Damage(run.status_file, e.reason, stages.STAGES[0].name))
        done = None
    found.extend(d for d in (config_damage(run), source_damage(run)) if d is not None)
    cache = cache_damage(run, done)
    if cache is not None:
        found.append(cache)
    n = _images(run) if cache is None else None
    for path, kind in _checked_files(run, done):
        reason = _problem(run, path, kind, n, checkpoint_problem, verify)
        if reason is not None:
            found.append(Damage(path, reason, owner(run, path, done)))
    order = {s.name: i for i, s in enumerate(stages.STAGES)}
    return sorted(found, key=lambda d: -1 if d.stage is None else order[d.stage])  # stable: status.json first


def _completed(run: RunDir) -> tuple[str, ...]:
    """The stages status.json records done; DamagedFile when it cannot say."""
    value = run.load_status().get("completed_stages", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DamagedFile(run.status_file, "completed_stages is not a list of stage names")
    return tuple(value)


def config_damage(run: RunDir) -> Damage | None:
    """config.json there but not a valid config (its reason is ConfigError's sentence, which names it)."""
    if not (run.config.exists() or run.config.is_symlink()):
        return None
    try:
        config_mod.load(run.config)
    except UserError as e:  # ConfigError, or not a regular file
        return Damage(run.config, str(e), None)
    return None


def source_damage(run: RunDir) -> Damage | None:
    try:
        source = load_json(run.source)
    except FileNotFoundError:
        return None
    except DamagedFile as e:
        return Damage(run.source, e.reason, None)
    if not isinstance(source, dict) or not isinstance(source.get("data"), str):
        return Damage(run.source, "it does not name the data folder", None)
    return None


def cache_damage(run: RunDir, done: tuple[str, ...] | None) -> Damage | None:
    """The decoded cache, checked against itself. A missing file is damage only once prepare is recorded
    done (an interrupted prepare leaves its cache incomplete, and reruns)."""
    if not run.data.is_dir():
        return Damage(run.data / INTAKE_FILE, MISSING, "prepare") if done and "prepare" in done else None
    problem = cache_problem(run.data)
    if problem is None:
        return None
    name, reason = problem
    if reason == MISSING and (done is None or "prepare" not in done):
        return None
    return Damage(run.data / name, reason, "prepare")


def _images(run: RunDir) -> int | None:
    meta = read_json(run.data / INTAKE_FILE, default=None)
    return meta.get("n_images") if isinstance(meta, dict) else None


def _checked_files(run: RunDir, done: tuple[str, ...] | None) -> list[tuple[Path, str]]:
    """(path, kind) of every run file that is there and that some reader relies on."""
    kinds: dict[Path, str] = {}
    for s in stages.STAGES[1:]:  # prepare's files are the cache, checked as one
        for p in (*s.writes(run), *s.keeps(run)):
            kinds[p] = _kind(run, p)
        if done is None or s.name not in done:  # a done stage's leftover resume point is never read
            for p in s.resume(run):
                kinds[p] = "checkpoint"
    for p in snapshots(run):
        kinds[p] = _kind(run, p)
    return [(p, k) for p, k in kinds.items() if p.exists() or p.is_symlink()]


def _kind(run: RunDir, path: Path) -> str:
    if path in (run.predictions, run.predictions_before):
        return "predictions"
    if path == run.loss_history:
        return "losses"
    if path in (run.samples, run.samples_before):
        return "samples"
    if path == run.split:
        return "split"
    if path == run.umap:
        return "map"
    if path == run.neighbours:
        return "neighbours"
    return "checkpoint" if RunDir.checkpoint_of(path) else "json"  # the stages' other files: metrics.json


def _problem(run: RunDir, path: Path, kind: str, n: int | None, checkpoint_problem: CheckpointCheck | None,
             verify: bool) -> str | None:
    try:
        if kind == "checkpoint":
            return _archive_problem(path) or (checkpoint_problem(path) if checkpoint_problem else None)
        if kind in ("predictions", "losses"):
            return _npz_problem(path, kind, n, verify)
        if kind == "samples":
            return samples_problem(path, n)
        if kind == "map":
            shape, dtype = npy_header(path)
            if len(shape) != 2 or shape[1] != 2 or dtype.kind != "f" or (n is not None and shape[0] != n):
                return f"it holds {shape} {dtype} where the map needs ({n if n is not None else 'N'}, 2) numbers"
            return None
        if kind == "neighbours":
            shape, dtype = npy_header(path)
            if len(shape) != 2 or dtype.kind != "i" or (n is not None and shape[0] != n):
                return f"it holds {shape} {dtype} where the review cards need ({n if n is not None else 'N'}, k) ids"
            return None
        if kind in ("split", "json"):
            value = load_json(path)
            if not isinstance(value, dict):
                return f"a JSON {type(value).__name__}, not an object"
            missing = [k for k in _SPLIT_KEYS if k not in value] if kind == "split" else []
            return f"it lacks {', '.join(missing)}" if missing else None
    except FileNotFoundError:
        return None  # removed since it was listed: not damage
    except DamagedFile as e:
        return e.reason
    return None


def _archive_problem(path: Path) -> str | None:
    """torch.save's format is a zip archive holding data.pkl: a cut or overwritten file is not one."""
    f, _ = open_regular(path)  # never blocks on a pipe
    with f:
        try:
            with zipfile.ZipFile(f) as z:
                if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                    return "not a checkpoint archive (no data.pkl)"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
            return "not a complete checkpoint archive"
    return None


def _npz_problem(path: Path, kind: str, n: int | None, verify: bool) -> str | None:
    arrays = npz_headers(path, verify=verify)
    # name: (ndim, the axis that counts images)
    needed = {"probs": (2, 0), "features": (2, 0), "losses": (2, 1)} if kind == "predictions" else \
        {"losses": (2, 1), "upto": (0, None)}
    for name, (ndim, axis) in needed.items():
        if name not in arrays:
            return f"it lacks the array {name}"
        shape = arrays[name][0]
        if len(shape) != ndim or (axis is not None and n is not None and shape[axis] != n):
            return f"its {name} has shape {shape}, not one row per image of the run's {n}"
    return None


def samples_problem(path: Path, n: int | None) -> str | None:
    """samples.csv must be UTF-8 CSV with the columns readers use, every row complete, ending in a newline,
    and (when the number of images is known) no fewer rows than images."""
    try:
        data = read_regular_bytes(path, max_bytes=_MAX_SAMPLES_BYTES)
    except DamagedFile as e:
        return e.reason
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except csv.Error as e:
        return f"not a readable CSV file ({e})"
    if not rows:
        return "it is empty"
    missing = [c for c in SAMPLES_COLUMNS if c not in rows[0]]
    if missing:
        return f"it lacks the column(s) {', '.join(missing)}"
    width = len(rows[0])
    short = next((k for k, row in enumerate(rows[1:], start=2) if len(row) != width), None)
    if short is not None:
        return f"line {short} has {len(rows[short - 1])} fields, not {width}"
    if not data.endswith(b"\n"):
        return "its last line is cut short"
    if n is not None and len(rows) - 1 < n:
        return f"it has {len(rows) - 1} rows for the run's {n} images"
    return None


def owner(run: RunDir, path: Path, done: tuple[str, ...] | None) -> str | None:
    """The stage whose redo writes `path` again: the last stage recorded done that writes it (or whose
    resume point it is), else the first that does."""
    writers = [s.name for s in stages.STAGES if path in _outputs(run, s.name) or path in s.resume(run)]
    if not writers:
        return None
    recorded = [w for w in writers if done is not None and w in done]
    return recorded[-1] if recorded else writers[0]


def damage_of(run: RunDir, path: Path, reason: str) -> Damage:
    """A damaged file found while a stage ran (a checkpoint torch could not load), as find_damage names it."""
    path = Path(path)
    if path == run.config or path == run.source:
        return Damage(path, reason, None)
    try:
        done: tuple[str, ...] | None = _completed(run)
    except DamagedFile:
        done = None
    if path.parent in (run.data,) or path == run.status_file:
        return Damage(path, reason, "prepare")
    return Damage(path, reason, owner(run, path, done))


# ----------------------------------------------------------------------------- what to redo


def plan(run: RunDir, damage: list[Damage] | tuple[Damage, ...], cfg: RunConfig | None = None) -> Plan:
    """The stages to redo for `damage`: each damaged file's stage and every later stage that depends on
    it, by the table (reads one of its outputs, or writes one of them too). A stage the settings turn
    off passes nothing on: its file is only removed."""
    start = {d.stage for d in damage if d.stage is not None}
    redo: list[str] = []
    for s in stages.STAGES:
        if s.name in start or any(_depends(run, s.name, t) for t in redo if not _off(cfg, t)):
            redo.append(s.name)
    try:
        recorded = set(_completed(run))
    except DamagedFile:
        recorded = set()
    done = tuple(name for name in redo if name in recorded)
    special = any(d.stage is None or d.path == run.status_file for d in damage)
    fit = special or any(stages.stage(name).phase == FIT for name in (*start, *done))
    return Plan(tuple(damage), tuple(redo), done, FIT if fit else FINETUNE)


def _off(cfg: RunConfig | None, name: str) -> bool:
    return cfg is not None and stages.stage(name).off(cfg) is not None


def _depends(run: RunDir, later: str, earlier: str) -> bool:
    """`later` reads what `earlier` writes, or writes the same files (redoing `earlier` would replace them)."""
    theirs = _outputs(run, earlier)
    mine = (*stages.stage(later).reads(run), *_outputs(run, later))
    return any(_overlap(a, b) for a in mine for b in theirs)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


# ----------------------------------------------------------------------------- saying it


def data_argument(run: RunDir) -> str:
    """DATA as the run was started with it (source.json, else the app's launch record), for commands."""
    for path in (run.source, run.launch):
        record = read_json(path, default=None)
        if isinstance(record, dict) and isinstance(record.get("data"), str) and record["data"]:
            return record["data"]
    return "DATA"


def repair_command(run: RunDir, phase: str) -> str:
    if phase == FIT:
        return f"python -m engine fit {shlex.quote(data_argument(run))} --run-dir {shlex.quote(str(run.path))} --resume"
    return f"python -m engine finetune {shlex.quote(str(run.path))} --resume"


def sentence(run: RunDir, p: Plan, cfg: RunConfig | None = None) -> str:
    """One sentence: which file is damaged, and the command that repairs it."""
    first = p.damage[0]
    if first.path == run.config:
        return (f"{first.reason}; `{repair_command(run, FIT)}` restores it from the run's checkpoints "
                "(review decisions are kept)")
    names = [run.relative(d.path) for d in p.damage]
    subject = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(names) == 1 else "are"
    state = "missing" if first.reason == MISSING else f"damaged ({first.reason})"
    return f"{subject} {verb} {state}: `{repair_command(run, p.phase)}` {_what(run, p, cfg)}"


def _what(run: RunDir, p: Plan, cfg: RunConfig | None) -> str:
    """What the repair command does, ending with what it keeps."""
    if any(d.path == run.status_file for d in p.damage):
        return "redoes the run's stages, reusing the decoded images if they are intact (review decisions are kept)"
    starts = [d.stage for d in p.damage if d.stage is not None]
    if not starts:
        return "writes it again"
    if all(_off(cfg, s) for s in starts):
        return f"removes it (the {starts[0]} stage is off in this run's settings)"
    first = next(s for s in p.redo if s in starts)
    after = [s for s in p.done if s != first and s not in starts]
    text = f"redoes the {first} stage"
    if after:
        text += f" and the stages that depend on it ({', '.join(after)})"
    if p.phase == FIT and any(stages.stage(s).phase == FINETUNE for s in p.done):
        text += f", then `python -m engine finetune {shlex.quote(str(run.path))}` fine-tunes again"
    return text + "; review decisions are kept"


# ----------------------------------------------------------------------------- repairing


def repair(run: RunDir, p: Plan) -> None:
    """Undo what `p` says, holding the run's worker lock: remove the damaged files (CLeaN's own, in its
    run), make the stages to redo not done, drop their resume points and the phase (a) snapshots of the
    stages redone. decisions.sqlite is never touched."""
    for d in p.damage:
        if d.path != run.decisions:  # never in the list; said here because it must never be
            _remove(d.path)
    if any(d.path == run.status_file for d in p.damage):
        stages.invalidate(run, [s.name for s in stages.STAGES])
    if p.redo:
        stages.invalidate(run, list(p.redo))
    for snapshot, name in snapshots(run).items():
        if name in p.redo:
            _remove(snapshot)


def _remove(path: Path) -> None:
    """Remove a damaged run file, whatever it is (a pipe or a folder put where a file belongs)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
