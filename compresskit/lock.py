"""One run per output folder: an exclusive lock on ``out_dir`` held while ``compress`` or ``train`` runs.

The lock is the file ``<out_dir>/.compresskit.lock``. Taking it means holding an OS lock on that file
(``fcntl.flock``, released by the kernel when the process ends, however it ends) and writing who holds
it: process id, host, start time and command. A second run on the folder fails at once with
:class:`FolderLockedError` naming the holder, or waits up to ``wait`` seconds when asked. A lock file
left by a process that died (``kill -9``, a power cut) holds no OS lock, so the next run takes it over
and says so. Where ``fcntl`` is missing (Windows), the file is created exclusively instead and a holder
that no longer runs on this host counts as stale. The file is removed when the lock is released.

Limits: the OS lock is as good as the filesystem's (local disks and NFSv4 honour it; some network
filesystems do not); a process of the same program on the same folder is let in (nested stages).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".compresskit.lock"

#: folders this process holds, by real path (a nested take in the same process is let in); weak, so a
#: lock an exception left behind is released when it is collected
_HELD: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()


class FolderLockedError(RuntimeError):
    """Another live run holds the folder's lock. ``holder`` says who (pid, host, started, command)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return (f"process {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')} "
            f"({holder.get('command') or 'no command recorded'})")


def read_holder(folder: str | os.PathLike) -> dict[str, Any]:
    """What the lock file of ``folder`` says about its holder (``{}`` when there is none)."""
    try:
        data = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(folder: Path) -> str:
    return str(folder.resolve())


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class FolderLock:
    """The lock of one folder; :meth:`acquire` / :meth:`release`, or use :func:`folder_lock`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0, what: str = "this run") -> FolderLock:
        """Take the lock; if a live process holds it, wait up to ``wait`` seconds, then raise
        :class:`FolderLockedError` naming the holder and the fixes."""
        if wait < 0:
            raise ValueError(f"wait: expected seconds >= 0, got {wait!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            holder = self._try()
            if holder is None:
                return self
            if time.monotonic() >= deadline:
                raise FolderLockedError(
                    f"out_dir: {str(self.folder)!r} is in use by {_describe(holder)}; {what} cannot share "
                    "an output folder with a live run (its start-up would delete the other run's files "
                    "and both would overwrite each other's results). Use another out_dir, wait for that "
                    "run to end, or ask to wait for it (wait_for_lock=seconds); if that process is gone, "
                    f"delete {str(self.path)!r}", holder)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def _try(self) -> dict[str, Any] | None:
        """Take the lock now: None on success, else what the lock file says about the holder."""
        if fcntl is None:  # pragma: no cover - Windows
            return self._try_exclusive()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return read_holder(self.folder)
            try:  # the file may have been removed (released) between our open and our lock: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = read_holder(self.folder)
        if previous and previous.get("pid") != os.getpid():
            warnings.warn(f"out_dir: taking over the lock of {str(self.folder)!r} left by "
                          f"{_describe(previous)}, which no longer holds it (it ended without releasing it)",
                          stacklevel=4)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_me()) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        _HELD[_key(self.folder)] = self
        return None

    def _try_exclusive(self) -> dict[str, Any] | None:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_holder(self.folder)
            if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                warnings.warn(f"out_dir: taking over the stale lock of {_describe(holder)}", stacklevel=4)
                self.path.unlink(missing_ok=True)
                return self._try_exclusive()
            return holder
        os.write(fd, (json.dumps(_me()) + "\n").encode())
        self._fd = fd
        _HELD[_key(self.folder)] = self
        return None

    def release(self) -> None:
        """Remove the lock file and give the lock back (a no-op if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if _HELD.get(_key(self.folder)) is self:
            _HELD.pop(_key(self.folder), None)
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter then retries on a new file
        finally:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def holder_if_locked(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds ``folder``'s lock if another live process does (``{}`` if unknown), else None."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if not path.is_file():
        return None
    if _key(folder) in _HELD:
        return None
    if fcntl is None:  # pragma: no cover - Windows
        holder = read_holder(folder)
        return holder if _alive(holder.get("pid")) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(folder)
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike | None, wait: float = 0.0,
                what: str = "this run") -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block (nothing when ``folder`` is None). A folder this
    process already holds is let in (the outer holder releases it)."""
    if folder is None or _key(Path(folder)) in _HELD:
        yield
        return
    lock = FolderLock(folder).acquire(wait, what)
    try:
        yield
    finally:
        lock.release()


__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME", "folder_lock", "holder_if_locked", "read_holder"]
