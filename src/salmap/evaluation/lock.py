"""A lock on an output folder: one salmap run writes to a folder at a time.

The lock is ``.salmap.lock`` in the folder, held with ``fcntl.flock`` for the life of the
run. The kernel releases it when the holder exits, however it exits (``kill -9``
included), so a lock left by a killed process is stale by construction and the next run
takes it over. The file records who holds it (pid, host, command, start time), so that
a second run can say who holds the folder before it exits. The holder removes the file
when it releases the lock (a refused run leaves nothing in the user's folder); a process
that locked a file removed meanwhile sees it is no longer the folder's and tries again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the recorded pid
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".salmap.lock"


class FolderLocked(ValueError):
    """Another live salmap process holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    """``pid 123 on host h (salmap evaluate run.yaml) since 2026-11-26 10:00:00``."""
    when = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{command}{since}"


class FolderLock:
    """Exclusive lock on ``folder`` (a context manager); :class:`FolderLocked` names the holder.

    Examples
    --------
    >>> with FolderLock(tmp_path):  # doctest: +SKIP
    ...     write_results()
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = self._lock_file()
            if fd is not None:
                self._fd = fd
                return self
        raise FolderLocked(f"output folder {str(self.path.parent)!r}: its lock file keeps being replaced; "
                           "another program is removing it")

    def _lock_file(self) -> int | None:
        """The locked file's descriptor; ``None`` when the file locked was removed or replaced meanwhile
        (its holder released it): it no longer locks the folder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise FolderLocked(self._message(self._holder(fd))) from None
            else:  # pragma: no cover
                holder = self._holder(fd)
                pid = holder.get("pid")
                if isinstance(pid, int) and pid != os.getpid() and holder.get("host") == socket.gethostname() \
                        and _alive(pid):
                    raise FolderLocked(self._message(holder))
            if not self._current(fd):
                os.close(fd)
                return None
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "command": " ".join(["salmap", *sys.argv[1:]])[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _current(self, fd: int) -> bool:
        """Whether ``fd`` is the file at the lock's path (not one removed or replaced meanwhile)."""
        try:
            here, held = os.stat(self.path), os.fstat(fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._current(fd):
                self.path.unlink()  # (still held: a process that opened it meanwhile sees it removed, and retries)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock

    def _holder(self, fd: int) -> dict[str, Any]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            found = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            found = {}
        return found if isinstance(found, dict) else {}

    def _message(self, holder: dict[str, Any]) -> str:
        return (f"output folder {str(self.path.parent)!r} is in use by another salmap run: {describe(holder)}; "
                "wait for it to finish or choose another folder")

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_FILE", "FolderLock", "FolderLocked", "describe"]
