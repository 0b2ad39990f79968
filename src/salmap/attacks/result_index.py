"""Which samples of a batch an index selects (``AttackResult[index]``): ints, slices, bool masks
and index tensors, checked with one-line errors."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

#: What selects samples of a result: an int, a slice, a bool mask ``(B,)`` or indices (tensor or sequence).
Index = int | slice | Tensor | Sequence[int] | Sequence[bool]


def selector(index: Any, size: int) -> slice | Tensor:
    """``index`` as a slice or a long/bool tensor that selects samples of a batch of ``size``, or a
    one-line ``IndexError`` (out of range, a mask of the wrong shape) or ``TypeError`` (not an index).

    An int ``i`` becomes ``slice(i, i + 1)`` (one sample, the batch dimension kept); a slice with a
    negative step, the indices it names (torch tensors take no negative steps); a sequence or
    NumPy array, a tensor. An index tensor's range is read from the device once."""
    expected = "an int, a slice, a bool mask of shape (B,) or a long tensor or sequence of sample indices"
    if isinstance(index, slice):
        if index.step is None or index.step > 0:
            return index
        return torch.tensor(list(range(*index.indices(size))), dtype=torch.long)  # (torch has no negative steps)
    if isinstance(index, (list, tuple)) or (type(index).__module__ == "numpy" and hasattr(index, "shape")):
        try:
            empty = isinstance(index, (list, tuple)) and not index
            index = torch.zeros(0, dtype=torch.long) if empty else torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"AttackResult indices must be {expected}, got {index!r}") from None
    if not isinstance(index, (bool, Tensor)) and hasattr(index, "__index__"):
        i = operator.index(index)
        if not -size <= i < size:
            raise IndexError(f"index {i} is out of range for an AttackResult of {size} samples "
                             f"(expected -{size} <= index < {size})")
        return slice(i % size, i % size + 1)
    if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex():
        raise TypeError(f"AttackResult indices must be {expected}, got {_describe(index)}")
    if index.dtype == torch.bool:
        if tuple(index.shape) != (size,):
            raise IndexError(f"a bool mask must have shape ({size},) to select samples of this AttackResult, "
                             f"got {tuple(index.shape)}")
        return index
    if index.dim() > 1:
        raise IndexError(f"AttackResult indices must be {expected}, got a tensor of shape {tuple(index.shape)}")
    if index.dim() == 0:
        return selector(int(index), size)
    if index.numel():
        low, high = torch.stack(torch.aminmax(index)).tolist()  # one read
        if low < -size or high >= size:
            bad = low if low < -size else high
            raise IndexError(f"index {bad} is out of range for an AttackResult of {size} samples "
                             f"(expected -{size} <= index < {size})")
    return index.long()


def _describe(value: Any) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else f"{value!r} ({type(value).__name__})"


__all__ = ["Index", "selector"]
