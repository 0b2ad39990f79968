"""Values rendered short for error messages."""

from __future__ import annotations

import builtins
import itertools
import reprlib
from typing import Any

from torch import Tensor


class _Brief(reprlib.Repr):
    """``reprlib``'s rendering, which cuts nested containers to a few items and levels as it renders
    them (a run file's alias bomb, ten million references to one list, renders in microseconds, not
    as 100 MB), with a mapping's keys in their order and a long string cut at its end."""

    def __init__(self) -> None:
        super().__init__()  # (keyword arguments need Python 3.12)
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxdeque, self.maxstring, self.maxlong, self.maxother = 6, 80, 40, 80

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                  for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(pieces + (["..."] if len(x) > self.maxdict else [])) + "}"

    def repr_str(self, x: str, level: int) -> str:
        return builtins.repr(x) if len(x) <= self.maxstring else builtins.repr(x[: self.maxstring])[:-1] + "..."


_BRIEF = _Brief()


def short(value: Any, limit: int = 80) -> str:
    """A short, readable rendering of ``value`` for an error message (at most ``limit`` characters)."""
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
