"""Atomic writes: nothing is lost if a run is interrupted mid-write.

Each file is written to a temp file beside it (``.name.XXXXXXXX.tmp``, given the mode a plain ``open``
would: 0666 less the umask), flushed and fsynced, renamed over
the target with ``os.replace`` (atomic on POSIX and Windows), and the folder is fsynced so the rename
survives a power cut. A process killed mid-write leaves its temp file behind; :func:`remove_stale_temps`
deletes those when the next run starts in the folder (``ck.train`` and ``ck.compress`` call it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"write: {str(path)!r} is a folder; expected the path of a file to write "
                                f"(e.g. {str(path / 'model.pt')!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError, AttributeError):  # mkstemp makes 0600: give the usual mode
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e):
            raise OSError(errno.ENOSPC, f"write: no space left on the device while writing {str(path)!r} "
                          f"({type(e).__name__}: {str(e).strip()[:200]}); nothing was replaced (any earlier "
                          "file there is intact); free some space or write to another folder") from e
        raise
    _fsync_dir(path.parent)
    return path


def _disk_full(e: BaseException) -> bool:
    """A full disk, as the OS says it (ENOSPC, EDQUOT) or as torch.save's zip writer does ("unexpected pos
    64 vs 0": it could not write where it expected)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return isinstance(e, RuntimeError) and "unexpected pos" in str(e)


def _umask() -> int:
    """The process umask (read without changing it where /proc says it; else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


#: the temp files :func:`_atomic` creates (``tempfile.mkstemp``: 8 characters of ``[a-z0-9_]``)
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(folder: str | os.PathLike, depth: int = 0) -> list[Path]:
    """Delete the temp files a killed writer left in ``folder`` (and ``depth`` levels of subfolders).

    Call it when a run starts, before anything writes there: a temp file is never the only copy of
    anything (the target is replaced only once its temp file is complete). Folders whose lock
    (:mod:`compresskit.lock`) another live process holds are left alone. Returns what was removed.
    """
    from compresskit.lock import holder_if_locked

    folder = Path(folder)
    if not folder.is_dir() or holder_if_locked(folder) is not None:
        return []  # a folder another live run holds: its temp files are in flight, not stale
    removed = []
    for entry in folder.iterdir():
        if entry.is_file() and TEMP_NAME.match(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif depth > 0 and entry.is_dir() and not entry.is_symlink():
            removed.extend(remove_stale_temps(entry, depth - 1))
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it to ``path`` (streaming writers)."""
    return _atomic(path, write)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    return atomic_write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n", path)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")
