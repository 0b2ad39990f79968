"""Shared input checks with clear error messages.

Every public entry point calls these so that bad input fails early with a
``ValueError`` that names the argument, the value received and what was expected.
Bounds live in :mod:`salmap._bounds` and are re-exported here, where the algorithms import
every check from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from salmap._bounds import Bounds, BoundsLike, check_bounds, clip_features
from salmap._repr import short as _short


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


#: Seeds are 63-bit: they reach torch generators and int64 tensors.
MAX_SEED = 2**63 - 1


def check_seed(value: Any, name: str = "seed") -> int:
    """Check a random seed: an integer in ``[0, 2**63 - 1]`` (refused at construction, not at call time)."""
    return int(check_number(name, value, low=0, high=MAX_SEED, integer=True))


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {_short(value)}")
    return value


def check_input(
    x: Any,
    bounds: Any = None,
    name: str = "x",
    min_dim: int = 2,
    tol: float = 1e-6,
) -> Tensor:
    """Check a batch of inputs: a floating tensor ``(B, ...)``, finite, inside ``bounds``."""
    return check_input_and_labels(x, None, bounds, name, min_dim, tol)[0]


def check_input_and_labels(
    x: Any,
    labels: Any,
    bounds: Any = None,
    name: str = "x",
    min_dim: int = 2,
    tol: float = 1e-6,
) -> tuple[Tensor, tuple[int, int] | None]:
    """:func:`check_input`, and the integer ``labels``' ``(min, max)`` (:func:`label_range`) read in
    the same transfer from the device (``None`` when ``labels`` is not a non-empty integer tensor):
    one host synchronisation instead of two."""
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
    # One reduction and one transfer of two numbers, not a copy of x: NaN propagates into the
    # minimum and maximum, and an infinity is one of them.
    values: tuple[Tensor, ...] = tuple(torch.aminmax(x.detach()))
    read_labels = _integer_labels(labels) and labels.device == x.device
    if read_labels:
        # The labels as float32 (float64 beside a float64 input): one cast of the small label
        # tensor, and the four numbers stacked in one kernel (no cast of each). Rounding to
        # nearest keeps the order and every integer below 2**24 (2**53) is exact, so a range
        # within that is the labels' own; beyond it (never class indices) it is read again exactly.
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        values = (*values, *torch.aminmax(labels.detach().to(wide)))
    numbers = torch.stack(values).tolist()
    xmin, xmax = float(numbers[0]), float(numbers[1])
    exact = 2.0**53 if x.dtype == torch.float64 else 2.0**24
    if read_labels and -exact < numbers[2] <= numbers[3] < exact:
        known: tuple[int, int] | None = (int(numbers[2]), int(numbers[3]))
    else:
        known = label_range(labels)
    if not (math.isfinite(xmin) and math.isfinite(xmax)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf values")
    if bounds is not None:
        b = check_bounds(bounds)
        if b.scalar:  # the minimum and maximum already in hand decide it
            low, high = b
            out = xmin < float(low) - tol or xmax > float(high) + tol
        else:
            out = b.outside(x, tol)
        if out:
            raise ValueError(
                f"{name} must lie within bounds {_bounds_text(b)}, got values in [{xmin:.6g}, {xmax:.6g}]"
            )
    return x, known


def _bounds_text(b: Bounds) -> str:
    if b.scalar:
        return f"({b.low}, {b.high})"
    return f"(per feature, low {_short(b.low)}, high {_short(b.high)})"


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
    known_range: tuple[int, int] | None = None,
) -> Tensor:
    """Return ``labels`` as a long tensor ``(batch,)`` of class indices in ``[0, num_classes)``.

    Accepts an int (used for every sample), a sequence, or a tensor. ``known_range``: the
    labels' ``(min, max)`` when the caller has read it already (:func:`label_range`), so
    that checking costs no transfer from the device here.
    """
    if isinstance(labels, bool):
        raise ValueError(f"{name} must be class indices, got {labels!r}")
    if isinstance(labels, int):
        labels = torch.full((batch,), labels, dtype=torch.long)
    labels = as_index_tensor(labels, name)
    labels = labels.reshape(-1) if labels.dim() == 0 else labels
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if labels.numel():
        low, high = known_range if known_range is not None else label_range(labels)  # type: ignore[misc]
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must be class indices in [0, {num_classes - 1}], got values in [{low}, {high}]"
            )
    return labels.to(device=device, dtype=torch.long)


def label_range(labels: Any) -> tuple[int, int] | None:
    """``(min, max)`` of an integer label tensor in one transfer of two numbers; ``None`` for
    anything else (ints, sequences, empty or non-integer tensors: :func:`check_labels` decides)."""
    if not _integer_labels(labels):
        return None
    low, high = torch.stack(torch.aminmax(labels.detach())).tolist()
    return int(low), int(high)


def _integer_labels(labels: Any) -> bool:
    return isinstance(labels, Tensor) and labels.numel() > 0 and not (
        labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool)


def check_shape(name: str, value: Tensor, expected: Sequence[int]) -> Tensor:
    """Check that ``value`` is a tensor of exactly ``expected`` shape."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")
    return value


__all__ = [
    "MAX_SEED", "Bounds", "BoundsLike", "as_index_tensor", "check_bounds", "check_choice", "check_input",
    "check_input_and_labels",
    "check_labels", "check_number", "label_range", "check_seed", "check_shape", "clip_features",
]
