"""Run folders belong to CLeaN: which folders the engine may write into, and which files in them are its own.

A run is created with a marker, RUN/.clean-run (`{"clean_run": RUN_FORMAT, "created_at": ...}`), before
anything else is written. A folder may become a run (`ownership_problem` is None) when it

* does not exist yet, or is empty: the engine creates it and writes the marker (`claim`);
* carries the marker, of a run format this version knows;
* is a run made before the marker existed: a status.json written by CLeaN (a JSON object whose state is
  one of engine.runs.status.STATES) and either a valid config.json or nothing but names CLeaN writes;
  the marker is added when the run is next worked on (`claim`).

Anything else — a folder of the user's own, whatever files it holds — is refused before anything is
written, deleted or changed in it. Inside a run the engine touches only the files it names (RunDir, the
stage table, the decoded cache) and the temp files of their atomic writes: `stale_temp_files` lists the
temp files an interrupted write left behind, by those names only, and only in a marked run.

This module imports no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine import config as config_mod
from engine.data.cache import CACHE_FILES
from engine.errors import UserError
from engine.runs import stages
from engine.runs.atomic import DamagedFile, atomic_write_json, load_json, now_iso
from engine.runs.rundir import FOLDERS, RUN_FORMAT, RunDir
from engine.runs.status import STATES

# The random part of tempfile.mkstemp's names (atomic writes, checkpoints, the cache's .npy files).
_RANDOM = r"[a-z0-9_]{8}"
_CACHE_TEMP = re.compile(rf"\.images\.(packed\.)?{_RANDOM}\.npy\.tmp")
# SQLite's own files next to the decision store.
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
_SHOWN = 4  # entries a refusal lists


# ----------------------------------------------------------------------------- which folders are runs


def marker_format(run: RunDir) -> int | None:
    """The run format the marker records; None when there is no readable marker."""
    try:
        marker = load_json(run.marker)
    except (FileNotFoundError, DamagedFile):
        return None
    value = marker.get("clean_run") if isinstance(marker, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_marked(run: RunDir) -> bool:
    version = marker_format(run)
    return version is not None and version <= RUN_FORMAT


def ownership_problem(path: Path, *, flag: str = "--run-dir") -> str | None:
    """Why `path` may not be used as a run folder (one sentence), or None when it may.

    Read-only: looks at the folder's entries, the marker, status.json and config.json.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_dir():
        return f"{flag} {path} is a file, not a folder: give a new or empty folder for the run"
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as e:
        return f"{flag} {path} cannot be read ({e.strerror or e})"
    if not entries:
        return None
    run = RunDir(path)
    version = marker_format(run)
    if version is not None and version > RUN_FORMAT:
        return (f"{flag} {path} is a run of a newer CLeaN (run format {version}; this version knows "
                f"{RUN_FORMAT}): open it with that version")
    if version is not None or _is_unmarked_run(run, entries):
        return None
    shown = ", ".join(entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")
    return (f"{flag} {path} is a folder CLeaN did not make (it holds {shown}, and no {run.marker.name}), so "
            "nothing in it is changed: give a new or empty folder for the run")


def _is_unmarked_run(run: RunDir, entries: list[str]) -> bool:
    """A run made before the marker existed: CLeaN's status.json, and CLeaN's config.json or CLeaN's names only."""
    try:
        status = load_json(run.status_file)
    except (FileNotFoundError, DamagedFile):
        return False
    if not isinstance(status, dict) or status.get("state") not in STATES or "updated_at" not in status:
        return False
    try:
        config_mod.load(run.config)
        return True
    except UserError:  # ConfigError, or a config.json that is not a regular file
        names = top_level_names(run)
        return all(e in names or _is_temp_of(e, names) for e in entries)


def claim(run: RunDir) -> None:
    """Make `run` a marked CLeaN run: create the folder and write the marker when it has none.

    Call only after `ownership_problem` said yes, and before anything else is written.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    if marker_format(run) is None:
        atomic_write_json(run.marker, {"clean_run": RUN_FORMAT, "created_at": now_iso()})


# ----------------------------------------------------------------------------- which files are CLeaN's


def written_files(run: RunDir) -> frozenset[Path]:
    """Every file the engine writes in a run: RunDir's names, the stages' checkpoints, both decoded caches."""
    files = set(run.named_files())
    for s in stages.STAGES:
        files.update((*s.writes(run), *s.keeps(run), *s.resume(run)))
    for folder in (run.data, run.test_data):
        files.update(folder / name for name in CACHE_FILES)
    return frozenset(files)


def top_level_names(run: RunDir) -> set[str]:
    """The names CLeaN uses directly inside a run folder (files, their temp files aside, and folders)."""
    names = {p.name for p in written_files(run) if p.parent == run.path}
    names.update(getattr(run, folder).name for folder in FOLDERS)
    names.update(run.decisions.name + s for s in _SQLITE_SIDECARS)
    return names


# Written by the app while a worker may hold the lock (the Inspect page's selection): never cleaned up,
# the app may be between writing its temp file and moving it into place.
def _not_the_workers(run: RunDir) -> frozenset[Path]:
    return frozenset({run.review_selection})


def stale_temp_files(run: RunDir) -> list[Path]:
    """Temp files of CLeaN's own atomic writes that an interrupted process left in a marked run.

    Only names CLeaN writes count (`.status.json.k3j2h1g0.tmp`, `.images.packed.a1b2c3d4.npy.tmp`); a
    user's `.draft.tmp` is not one, and nothing is listed in a folder without the marker.
    """
    if not is_marked(run):
        return []
    own = written_files(run) - _not_the_workers(run)
    by_folder: dict[Path, set[str]] = {}
    for p in own:
        by_folder.setdefault(p.parent, set()).add(p.name)
    found = []
    for folder, names in sorted(by_folder.items()):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        caches = folder in (run.data, run.test_data)
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and (_is_temp_of(entry.name, names)
                                                         or (caches and _CACHE_TEMP.fullmatch(entry.name))):
                found.append(Path(entry.path))
    return sorted(found)


def _is_temp_of(name: str, names: set[str]) -> bool:
    m = re.fullmatch(rf"\.(?P<name>.+)\.{_RANDOM}\.tmp", name)
    return m is not None and m.group("name") in names


def remove_stale_temp_files(run: RunDir) -> int:
    """Delete `stale_temp_files` (call it holding the run's worker lock); returns how many went."""
    gone = 0
    for p in stale_temp_files(run):
        p.unlink(missing_ok=True)
        gone += 1
    return gone
