"""Values rendered short for error messages."""

from __future__ import annotations

import reprlib
from typing import Any

from torch import Tensor

# (nested containers cut to a few items and levels as they are rendered: a run file's alias bomb,
# ten million references to one list, renders in microseconds, not as 100 MB)
_BRIEF = reprlib.Repr()  # (keyword arguments need Python 3.12)
_BRIEF.maxlevel = 3
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxarray = _BRIEF.maxdict = _BRIEF.maxset = _BRIEF.maxfrozenset = 6
_BRIEF.maxdeque, _BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 6, 80, 40, 80


def short(value: Any, limit: int = 80) -> str:
    """A short, readable rendering of ``value`` for an error message (at most ``limit`` characters)."""
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
