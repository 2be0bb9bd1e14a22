"""Small file-system helpers shared by the commands that write image trees (noise, export)."""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from pathlib import Path


def safe_folder_name(label: str) -> str:
    """A class name as a single, portable folder name (slashes, dots, control characters defused).

    A label such as "../x" or "a/b" must never become more than one path component.
    """
    name = unicodedata.normalize("NFC", label)
    name = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]", "_", name).strip()
    name = re.sub(r"^\.+", lambda m: "_" * len(m.group()), name)  # no "..", and no hidden folder a scan would skip
    return (name or "_")[:120]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when source and target share a file system (no extra space), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
