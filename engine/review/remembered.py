"""A new run starts with what the workspace remembers about its images.

The prepare stage (engine.train.pipeline) calls `start_run` once the images are decoded: it hashes every
image file into RUN/data/sha256.csv (engine.review.hashes; a later call re-reads only changed files) and,
unless the run opted out (`fit --no-memory`, recorded as `review.memory=false` in config.json), writes the
decisions the workspace memory holds for those images into the run's store (engine.review.memory
.seed_run_store: by sha256 first, then by path). A re-upload, renamed or moved files thus start reviewed.

The memory is a help, never a condition: a memory that cannot be read is reported and the run goes on
without it. `engine.review.memory.uses_memory` tells the app and the commands whether a run writes to it.
Torch-free.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.review.hashes import image_hashes
from engine.review.memory import Memory, seed_run_store
from engine.runs.rundir import RunDir

Note = Callable[[str], None]


@dataclass(frozen=True)
class Started:
    hashed: int  # images with a sha256 (missing or unreadable files have none)
    seeded: int  # decisions the run started with
    problem: str | None  # why the memory could not be used, when it could not


def start_run(run_dir: Path, root: Path, paths: Sequence[str], given: Sequence[str], classes: Sequence[str], *,
              use_memory: bool, note: Note | None = None, memory: Memory | None = None) -> Started:
    """Hash the run's images and seed its decision store from the memory (see the module docstring).

    Args:
        root: the folder `paths` are relative to (the data root); given: the images' given labels, aligned.
        note: where to say how many decisions the run started with (the worker's progress note).
    """
    say = note or (lambda message: None)
    hashes = image_hashes(run_dir, root, list(paths))
    if not use_memory:
        say("not using the decisions remembered in the workspace (review.memory is off)")
        return Started(len(hashes), 0, None)
    try:
        n = seed_run_store(run_dir, paths, [hashes.get(p) for p in paths], classes, given=given, memory=memory)
    except (UserError, sqlite3.Error, OSError) as e:
        say(f"starting without the workspace's remembered decisions: {e}")
        return Started(len(hashes), 0, str(e))
    RunDir(run_dir).append_event(kind="memory", decisions=n)
    say(f"started with {n} review {'decision' if n == 1 else 'decisions'} remembered for these images")
    return Started(len(hashes), n, None)
