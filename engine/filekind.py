"""What kind of file a path names, looked at with os.stat before anything opens it.

Opening a named pipe blocks until someone writes into it, a device may never end (/dev/zero) or be the
system's own (/dev/null), a socket cannot be read at all. So every file a person names as an input (a
config, a truth file, a noise mapping, a CSV manifest) is checked here first, and so is every file an
export would replace. This module imports nothing but the standard library (the app uses it too).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.errors import UserError

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def describe(mode: int) -> str:
    """A stat mode in words: "a regular file", "a folder", "a named pipe", "a character device", ..."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a special file"


def require_regular_file(path: Path, what: str, hint: str, *, max_bytes: int | None = None) -> int:
    """Refuse, with one sentence, anything but an existing regular file (links to one are fine).

    Args:
        path: the file a person named.
        what: how the message names it, e.g. "config file".
        hint: what to give instead, e.g. "a JSON file".
        max_bytes: refuse a larger file (for inputs that are read whole into memory).

    Returns:
        The file's size in bytes.

    Raises:
        UserError: missing, a folder, a pipe, a device, a socket, unreadable, or over `max_bytes`.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a folder, not {hint}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file ({describe(st.st_mode)}): give {hint}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{what} {path} is {st.st_size} bytes, more than the limit of {max_bytes} bytes "
                        f"for {hint}")
    return st.st_size
