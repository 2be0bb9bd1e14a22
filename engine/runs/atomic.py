"""Atomic file writes (temp file + os.replace), and JSON reads that tell "missing" from "damaged".

A reader polling a run while it trains never sees half a file. A file can still be damaged from outside
(a full disk, a copy cut short, an editor, garbage written over it), so there are two readers:

    load_json(path)           strict: FileNotFoundError when the file is missing, DamagedFile when it is
                              there but not readable JSON (not a regular file, not UTF-8, not JSON,
                              nested too deeply, too large); for commands that must say which file is bad
    read_json(path, default)  tolerant: `default` when missing or damaged; for pollers (the app, progress)
                              that show what they can and leave the diagnosis to `python -m engine status`

Neither ever opens a named pipe in a way that blocks, nor reads a device. This module imports no torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.filekind import describe

MAX_JSON_BYTES = 256 * 1024 * 1024  # intake.json lists every skipped file; anything larger is not ours


class DamagedFile(UserError):
    """A file the engine wrote (or expects) that is there but cannot be read as what it should be.

    `path` and `reason` let the caller word one sentence with the repair (engine.runs.integrity); as a
    plain UserError it still reads as one sentence naming the file.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path} is damaged ({reason})")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: Path, **arrays: Any) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_npy(path: Path, array: Any) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NaN/inf (e.g. an undefined AUROC) are written as null, which every reader accepts."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite(o: Any) -> Any:
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):  # numpy scalars and arrays
        o = o.tolist()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return o.as_posix()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_regular_bytes(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of a regular file, opened without blocking and looked at before it is read.

    Raises FileNotFoundError when there is nothing at `path`, DamagedFile when it is a pipe, device,
    socket or folder, larger than `max_bytes`, or unreadable.
    """
    f, size = open_regular(path)
    with f:
        if size > max_bytes:
            raise DamagedFile(path, f"{size} bytes, more than the {max_bytes} bytes it may have")
        try:
            return f.read()
        except OSError as e:
            raise DamagedFile(path, f"cannot be read: {e.strerror or e}") from None


def load_json(path: Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict read: the parsed JSON. FileNotFoundError when missing; DamagedFile when it is there but
    is not a regular file, not UTF-8, not JSON, nested too deeply to parse, or over `max_bytes`."""
    data = read_regular_bytes(path, max_bytes=max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DamagedFile(path, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise DamagedFile(path, "JSON nested too deeply") from None


def read_json(path: Path, default: Any = None) -> Any:
    """Tolerant read: the parsed JSON, or `default` when the file is missing or damaged (see load_json)."""
    try:
        return load_json(path)
    except (FileNotFoundError, DamagedFile):
        return default


# ----------------------------------------------------------------------------- array files, read strictly


def open_regular(path: Path) -> tuple[Any, int]:
    """(binary file object, size) of the regular file at `path`, opened without blocking on a pipe.

    Raises FileNotFoundError when there is nothing there, DamagedFile when it is not a regular file.
    """
    fd, st = _open_regular(Path(path))
    return os.fdopen(fd, "rb"), st.st_size


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    # Looked at before it is opened: opening a pipe, even without blocking, would let a writer waiting on
    # it go on. The second look (fstat) covers a file swapped for a pipe between the two.
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(2, "No such file or directory", str(path)) from None
    except OSError as e:
        raise DamagedFile(path, f"cannot be looked at: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise DamagedFile(path, f"{describe(mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(2, "No such file or directory", str(path)) from None
    except IsADirectoryError:
        raise DamagedFile(path, "a folder, not a file") from None
    except OSError as e:
        raise DamagedFile(path, f"cannot be opened: {e.strerror or e}") from None
    st = os.fstat(fd)
    # O_NONBLOCK was for the open only (a pipe); reads of a regular file never block anyway.
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DamagedFile(path, f"{describe(st.st_mode)}, not a regular file")
    return fd, st


def _array_header(f: Any, size: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the .npy header at f's position; `size` bytes of .npy in all, checked."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as e:
        raise ValueError(f"no readable array header: {e}") from None
    if dtype.hasobject:
        raise ValueError("it holds Python objects, not numbers")
    expected = f.tell() - start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise ValueError(f"{size} bytes where its header needs {expected} for {shape} {dtype}")
    return tuple(int(n) for n in shape), dtype


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file, from its header alone; the file's size must be what the header says.

    Raises FileNotFoundError when missing, DamagedFile when unreadable, cut short or too long.
    """
    f, size = open_regular(path)
    with f:
        try:
            return _array_header(f, size)
        except ValueError as e:
            raise DamagedFile(path, str(e)) from None


def npz_headers(path: Path, *, verify: bool = False) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every array in a .npz, from the headers alone (no array is read).

    verify: also read every member and check its CRC (finds bytes flipped inside; costs one read).
    Raises FileNotFoundError when missing, DamagedFile when it is not a complete .npz.
    """
    import zipfile

    f, _ = open_regular(path)
    with f:
        try:
            with zipfile.ZipFile(f) as z:
                out = {}
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        raise ValueError(f"member {info.filename} is not an array")
                    with z.open(info) as member:
                        try:
                            out[info.filename.removesuffix(".npy")] = _array_header(member, info.file_size)
                        except ValueError as e:
                            raise ValueError(f"member {info.filename}: {e}") from None
                if verify and z.testzip() is not None:
                    raise ValueError("a member fails its checksum")
                return out
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, RuntimeError) as e:
            reason = "not a complete .npz archive" if isinstance(e, zipfile.BadZipFile) else str(e)
            raise DamagedFile(path, reason) from None
