"""Values rendered short for error messages."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def short(value: Any) -> str:
    """A short, readable rendering of ``value`` for an error message."""
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
