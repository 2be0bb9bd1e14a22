"""Extract an uploaded .zip without trusting it.

A zip made by a stranger can hold names like `../../.bashrc` or `/etc/passwd`, symbolic links, or a
few kilobytes that expand to terabytes. `safe_extract`:

* checks the member count and the total declared size BEFORE writing anything (zip bombs);
* never writes outside the destination: absolute names, drive letters and `..` parts are refused,
  and every target is re-checked after resolving;
* never creates symbolic links, never overwrites (each file is created exclusively);
* caps each member at its declared size while streaming (the zip reader already stops there; the
  cap makes that explicit), and checks CRCs (a corrupt member is removed and reported);
* leaves out hidden files and macOS resource forks (`.DS_Store`, `__MACOSX/`);
* gives each file the modification time stored in the zip, so extracting the same zip twice yields
  the same file stamps (the prepare cache fingerprints them).

It returns the members it refused with a reason; it raises `ZipRejected` for a zip that must not be
extracted at all.
"""

from __future__ import annotations

import os
import re
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1


class ZipRejected(ValueError):
    """The archive as a whole is refused (not a zip, too many members, expands too much)."""


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_total_bytes: int
    max_file_bytes: int


@dataclass(frozen=True)
class RefusedMember:
    name: str
    reason: str


def is_hidden(part: str) -> bool:
    """Names a person never meant as data: dot files (.DS_Store, .git) and macOS resource forks."""
    return part.startswith(".") or part == "__MACOSX"


def safe_extract(zip_path: Path, dest: Path, limits: ZipLimits) -> list[RefusedMember]:
    """Extract `zip_path` into the folder `dest` (created if needed).

    Raises:
        ZipRejected: not a readable zip, more than `max_members` files, or more than `max_total_bytes`
            once expanded. Raised before anything is written.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ZipRejected(f"{zip_path} is not a readable zip file ({e})") from e
    except UnicodeDecodeError as e:  # the zip reader decodes every name on opening and stops at the first bad one
        raise ZipRejected(
            f"{zip_path} marks its file names as UTF-8 but holds one that is not: re-create the zip"
        ) from e
    with archive:
        files = [info for info in archive.infolist() if not info.is_dir()]
        _check_totals(zip_path, files, limits)
        dest.mkdir(parents=True, exist_ok=True)
        dest_resolved = dest.resolve()
        refused: list[RefusedMember] = []
        seen: set[str] = set()
        for info in files:
            name = _member_name(info)
            reason = _refusal(info, name, limits)
            if reason is None and name in seen:
                reason = "duplicate name in zip (first copy kept)"
            if reason == "hidden":
                continue
            if reason is not None:
                refused.append(RefusedMember(name, reason))
                continue
            target = dest_resolved.joinpath(*PurePosixPath(name).parts)
            if not target.resolve().is_relative_to(dest_resolved):  # e.g. a folder that is a link
                refused.append(RefusedMember(name, "unsafe path in zip (would be written outside the folder)"))
                continue
            seen.add(name)
            problem = _extract_member(archive, info, target)
            if problem is not None:
                refused.append(RefusedMember(name, problem))
    return refused


def _check_totals(zip_path: Path, files: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(files) > limits.max_members:
        raise ZipRejected(
            f"{zip_path.name} holds {len(files)} files, more than the limit of {limits.max_members}: "
            "split the data set or raise the limit"
        )
    total = sum(info.file_size for info in files)
    if total > limits.max_total_bytes:
        size, limit = _human_bytes(total), _human_bytes(limits.max_total_bytes)
        if size == limit:  # rounded to the same figure: show the bytes, so the message shows the excess
            size, limit = f"{total} bytes", f"{limits.max_total_bytes} bytes"
        raise ZipRejected(
            f"{zip_path.name} would expand to {size}, more than the limit of {limit} (possible zip bomb); "
            "nothing was extracted"
        )


def _member_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    if not info.flag_bits & _UTF8_FLAG:
        # Zips without the UTF-8 flag are decoded as cp437 by the zip reader; many tools (macOS
        # Archive Utility, 7-Zip on Linux) actually wrote UTF-8 there, so try reading it back as UTF-8.
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")  # some Windows tools write backslashes


def _refusal(info: zipfile.ZipInfo, name: str, limits: ZipLimits) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or _DRIVE.match(name) or ".." in parts or not parts:
        return "unsafe path in zip (would be written outside the folder)"
    if any(is_hidden(p) for p in parts):
        return "hidden"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in zip (not extracted)"
    if info.flag_bits & _ENCRYPTED_FLAG:
        return "encrypted zip member (not extracted)"
    if info.file_size > limits.max_file_bytes:
        return f"file too large ({info.file_size} bytes > limit {limits.max_file_bytes})"
    return None


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str | None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. "a" is a file and "a/b.png" wants it as a folder
        return f"cannot be extracted ({e.strerror or e})"
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise zipfile.BadZipFile("member larger than its declared size")
                dst.write(chunk)
    except FileExistsError:
        return "duplicate name in zip (first copy kept)"
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        target.unlink(missing_ok=True)
        return f"corrupt zip member ({e})"
    try:
        stamp = time.mktime((*info.date_time, 0, 0, -1))
        os.utime(target, (stamp, stamp))
    except (OverflowError, ValueError, OSError):
        pass  # an impossible date in the zip: keep the extraction time
    return None


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
