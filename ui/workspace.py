"""Where the app keeps its files: `WORKSPACE` = env `CLEAN_WORKSPACE` or `<repo>/workspace`.

    WORKSPACE/runs/<run_id>/      one folder per run (engine.runs)
    WORKSPACE/uploads/<id>/       datasets people uploaded (zip, folder)
    WORKSPACE/exports/<run_id>/   files generated for the Export page's downloads
    WORKSPACE/memory.sqlite       review decisions remembered across runs (engine.review.memory)

Every name that comes from a person (upload file names, run ids in a URL) is checked here, so
nothing can point outside the workspace.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import datetime
from pathlib import Path

from engine.review import memory
from engine.runs import jobs

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "sample_data"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Characters no file name may hold on Linux, macOS or Windows (separators, reserved punctuation). Letters of
# every script stay: a class folder named 猫 or café is a class name, and flattening it would merge classes.
_RESERVED_CHARS = frozenset('/\\:*?"<>|')
_MAX_NAME_BYTES = 240  # file systems allow 255 bytes per name; UTF-8 letters take up to 4 bytes each


def workspace_root() -> Path:
    return memory.workspace_root()  # the engine resolves it: CLI runs share the workspace's decision memory


def runs_root() -> Path:
    return jobs.runs_root(workspace_root())


def uploads_root() -> Path:
    return workspace_root() / "uploads"


def exports_root() -> Path:
    return workspace_root() / "exports"


def is_run_id(run_id: str | None) -> bool:
    return bool(run_id) and bool(_RUN_ID.match(run_id)) and ".." not in run_id


def run_path(run_id: str | None) -> Path | None:
    """The folder of an existing run, or None for a malformed or unknown id (e.g. a stale URL)."""
    if not run_id or not is_run_id(run_id):
        return None
    path = runs_root() / run_id
    return path if path.is_dir() else None


def list_run_ids() -> list[str]:
    """Run ids, newest first (ids start with their start time, so names sort by date)."""
    root = runs_root()
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and is_run_id(p.name)), reverse=True)


def new_upload_dir() -> Path:
    """A fresh `WORKSPACE/uploads/<id>/` folder."""
    upload_id = f"{datetime.now():%Y-%m-%dT%H-%M-%S}_{secrets.token_hex(3)}"
    path = uploads_root() / upload_id
    path.mkdir(parents=True, exist_ok=False)
    return path


def safe_name(name: str, default: str = "file") -> str:
    """One path component a person gave us, made harmless while keeping its letters in any script.

    NFC normalisation first, so the decomposed names macOS uploads ('cafe' + combining accent) and the
    composed ones other systems send name the same class. Then separators, reserved punctuation and
    control or invisible format characters (category C*, e.g. a right-to-left override) become '_';
    leading/trailing dots and spaces go (no hidden files, no '..'); the name is cut to fit in 240 bytes,
    keeping its suffix.
    """
    text = unicodedata.normalize("NFC", name)
    # One '_' per character (no collapsing), so 'a:b' and 'a::b' stay two names.
    cleaned = "".join("_" if _is_unsafe_char(c) else c for c in text).strip(" .")
    return _fit_bytes(cleaned) or default


def _is_unsafe_char(char: str) -> bool:
    category = unicodedata.category(char)
    # C*: control, format, surrogate, private, unassigned; Zl/Zp: line breaks in all but name.
    return char in _RESERVED_CHARS or category[0] == "C" or category in ("Zl", "Zp")


def _fit_bytes(name: str, limit: int = _MAX_NAME_BYTES) -> str:
    """`name` cut at a character boundary to at most `limit` UTF-8 bytes, keeping a short suffix such as '.png'."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = name, ""
    tail = f".{suffix}" if suffix else ""
    room = limit - len(tail.encode())
    return stem.encode()[:room].decode(errors="ignore").rstrip(" .") + tail


def safe_relative_parts(name: str) -> list[str]:
    """Split an uploaded file's relative name ('photos/cat/1.png') into safe components.

    Empty, '.' and '..' components are dropped and each remaining part is sanitised, so joining the
    result under a folder can never leave that folder.
    """
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".", "..")]
    return [safe_name(p) for p in parts]


def is_inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False
