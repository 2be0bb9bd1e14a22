"""Where the app keeps its files: `WORKSPACE` = env `CLEAN_WORKSPACE` or `<repo>/workspace`.

    WORKSPACE/runs/<run_id>/      one folder per run (engine.runs)
    WORKSPACE/uploads/<id>/       datasets people uploaded (zip, folder)
    WORKSPACE/exports/<run_id>/   files generated for the Export page's downloads

Every name that comes from a person (upload file names, run ids in a URL) is checked here, so
nothing can point outside the workspace.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "sample_data"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")


def workspace_root() -> Path:
    return Path(os.environ.get("CLEAN_WORKSPACE") or REPO_ROOT / "workspace").expanduser().resolve()


def runs_root() -> Path:
    return workspace_root() / "runs"


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
    """One path component a person gave us, reduced to harmless characters (no separators, no dots-only)."""
    cleaned = _UNSAFE_CHARS.sub("_", name.replace("/", "_").replace("\\", "_")).strip(" .")
    return cleaned[:120] or default


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
