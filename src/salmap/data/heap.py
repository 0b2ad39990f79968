"""Giving the memory freed by one batch back to the system before the next (glibc's ``malloc_trim``).

A streamed run allocates and frees the same large tensors batch after batch (decoded images,
adversarial copies, attribution maps), interleaved with small objects that live longer (rows,
file names). glibc serves tensors of a few MB from its heap once one of that size has been
freed (its mmap threshold rises), and the long-lived small objects pin the heap, so the freed
batches stay resident as holes that new batches do not always fit: the process's peak RSS
grows with the number of batches although the live memory does not (measured with ``salmap
explain``'s earlier loop on 224 x 224 images, batch 32: +470 MB from 200 to 1,000 images, the
same live memory at the end). ``malloc_trim(0)`` returns the free pages of every arena to the
system, so the resident memory left between batches is the live memory. A run's own reuse
(a few batches' worth of free heap from one batch to the next) is left alone through an
allowance. Elsewhere than glibc (macOS, Windows, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33+): sizes in bytes as ``size_t``."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc() -> tuple[Callable[[int], Any] | None, Callable[[], Any] | None]:
    """``(malloc_trim, mallinfo2)`` of the C library, each None where it has none."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None, None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    info = getattr(libc, "mallinfo2", None)
    if info is not None:
        info.argtypes = []
        info.restype = _MallInfo2
    return trim, info


def free_heap_bytes() -> int | None:
    """Bytes the C library holds free in its heap (glibc ``mallinfo2().fordblks``), None if unknown."""
    info = _libc()[1]
    return None if info is None else int(info().fordblks)


def release_freed_memory(allowance: int = 0) -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); live memory is untouched.

    ``allowance``: leave the heap alone while it holds at most this many free bytes (reused by
    the next batch anyway; where the free size cannot be read, the heap is trimmed). Returns
    whether it was trimmed (always False where the C library has no ``malloc_trim``). A trim
    walks the free chunks (25 ms a call on average in a 224 x 224, batch-32 run on a loaded
    2-core machine) and the pages it gives back are faulted in again when reused: it is meant
    for once per streamed batch, with an allowance of about a batch.
    """
    trim = _libc()[0]
    if trim is None:
        return False
    free = free_heap_bytes() if allowance > 0 else None
    if free is not None and free <= allowance:
        return False
    trim(0)
    return True


__all__ = ["free_heap_bytes", "release_freed_memory"]
