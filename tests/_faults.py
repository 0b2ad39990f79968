"""Faults the tests put a run through: a disk that fills up in the middle of a write."""

from __future__ import annotations

import builtins
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock


class _FillsUp:
    """A file open for writing that takes the first five bytes of a write, then finds the disk full."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def __enter__(self) -> _FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: Any) -> None:
        self.fh.write(data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")


@contextmanager
def full_disk() -> Iterator[None]:
    """Inside the block every file opened for writing fails with ENOSPC after its first five bytes."""
    real_open = builtins.open

    def opening(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(path, mode, *args, **kwargs)
        return _FillsUp(fh) if "w" in mode else fh

    with mock.patch("builtins.open", opening):
        yield
