"""Progress bars, shown only where a person watches: on a terminal (or in a notebook).

A log file or a pipe gets no bar at all (tqdm would write one carriage-return update per
step into it), and ``salmap --quiet`` turns them off everywhere. Every progress bar in
salmap is made by :func:`bar`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

_quiet = False


def configure(quiet: bool = False) -> None:
    """Turn every progress bar off (``quiet=True``, the command line's ``--quiet``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def on_terminal() -> bool:
    """Whether a person watches: stderr is a terminal, or the code runs in a notebook."""
    stream = sys.stderr
    try:
        tty = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty or "ipykernel" in sys.modules


def enabled(requested: bool = True) -> bool:
    """Whether a bar that the caller asked for (``requested``) is shown."""
    return bool(requested) and not _quiet and on_terminal()


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled unless ``enabled`` and on a terminal (see :func:`salmap.progress.enabled`)."""
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not _show(enabled), **kwargs)


def _show(requested: bool) -> bool:
    return enabled(requested)
