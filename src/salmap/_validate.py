"""Shared input checks with clear error messages.

Every public entry point calls these so that bad input fails early with a
``ValueError`` that names the argument, the value received and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Bounds = tuple[float, float]


def _short(value: Any) -> str:
    """A short, readable rendering of ``value`` for an error message."""
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_bounds(bounds: Any, name: str = "bounds") -> Bounds:
    """Return ``bounds`` as a ``(low, high)`` pair of finite floats with ``low < high``."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {_short(bounds)}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(f"{name} must be finite with low < high, got ({low}, {high})")
    return low, high


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Any:
    """Check that ``value`` is a finite number in the interval described by the limits."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {kind}, got {_short(value)}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{name} must be {kind}, got {_short(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else str(low)
        right = "inf" if high is None else str(high)
        interval = ("(" if low_open or low is None else "[") + f"{left}, {right}"
        interval += ")" if high_open or high is None else "]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {_short(value)}")
    return value


def check_input(
    x: Any,
    bounds: Bounds | None = None,
    name: str = "x",
    min_dim: int = 2,
    tol: float = 1e-6,
) -> Tensor:
    """Check a batch of inputs: a floating tensor ``(B, ...)``, finite, inside ``bounds``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions (batch first), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf values")
    if bounds is not None:
        low, high = bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < low - tol or xmax > high + tol:
            raise ValueError(
                f"{name} must lie within bounds ({low}, {high}), got values in [{xmin:.6g}, {xmax:.6g}]"
            )
    return x


def as_index_tensor(labels: Any, name: str, expected: str = "class indices") -> Tensor:
    """``labels`` as an integer tensor (from a tensor, sequence or array), or a ``ValueError``
    naming ``name`` and saying that ``expected`` was wanted."""
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be {expected}, got {_short(labels)}") from None
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    return labels


def check_labels(
    labels: Any,
    batch: int,
    num_classes: int,
    name: str = "y",
    device: torch.device | None = None,
) -> Tensor:
    """Return ``labels`` as a long tensor ``(batch,)`` of class indices in ``[0, num_classes)``.

    Accepts an int (used for every sample), a sequence, or a tensor.
    """
    if isinstance(labels, bool):
        raise ValueError(f"{name} must be class indices, got {labels!r}")
    if isinstance(labels, int):
        labels = torch.full((batch,), labels, dtype=torch.long)
    labels = as_index_tensor(labels, name)
    labels = labels.reshape(-1) if labels.dim() == 0 else labels
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes - 1}], "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.to(device=device, dtype=torch.long)


def check_shape(name: str, value: Tensor, expected: Sequence[int]) -> Tensor:
    """Check that ``value`` is a tensor of exactly ``expected`` shape."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")
    return value
