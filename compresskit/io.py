"""Atomic writes: nothing is lost if a run is interrupted mid-write.

Each file is written to a temp file beside it (``.name.XXXXXXXX.tmp``), flushed and fsynced, renamed over
the target with ``os.replace`` (atomic on POSIX and Windows), and the folder is fsynced so the rename
survives a power cut. A process killed mid-write leaves its temp file behind; :func:`remove_stale_temps`
deletes those when the next run starts in the folder (``ck.train`` and ``ck.compress`` call it).
"""

from __future__ import annotations

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


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
