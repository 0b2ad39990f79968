"""Shared input checks with clear error messages.

Every public entry point calls these so that bad input fails early with a
``ValueError`` that names the argument, the value received and what was expected.
Bounds live in :mod:`salmap._bounds` and are re-exported here, where the algorithms import
every check from.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salmap._bounds import Bounds, BoundsLike, check_bounds, clip_features
from salmap._repr import short as _short


def check_flag(name: str, value: Any) -> bool:
    """An on/off option: ``True``/``False`` (NumPy's too, and the integers 0 and 1); anything else,
    such as the string ``"False"`` (which ``bool()`` reads as true), is a ``ValueError``."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {_short(value)}")


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Any:
    """Check that ``value`` is a finite number in the interval described by the limits.

    NumPy scalars are numbers too (``np.float32(8 / 255)``, ``np.int64(40)`` from an array of
    settings): the value is returned as a Python ``int`` (integers) or ``float``.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()  # a 0-d tensor (eps=torch.tensor(8 / 255)): its number
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {kind}, got {_short(value)}")
    if integer and not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {kind}, got {_short(value)}")
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
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
    checks = InputChecks(x, labels, bounds, name, min_dim, tol)
    return x, checks.judge(checks.values.tolist())


class InputChecks:
    """The checks of a batch ``x`` (and of its integer ``labels``) in two halves: the host's
    (type, dimensions, batch size) at once, and the numbers the rest needs (the input's minimum
    and maximum, the labels', whether a feature lies outside per-feature bounds) queued on the
    device as one tensor, :attr:`values`, that :meth:`judge` reads. A caller that must not wait
    for the device before its work (a sync-free attack) reads them with its own numbers at the
    end: one transfer per call."""

    def __init__(
        self, x: Any, labels: Any, bounds: Any = None, name: str = "x", min_dim: int = 2, tol: float = 1e-6
    ) -> None:
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
        self.x, self.labels, self.name, self.tol = x, labels, name, tol
        self.bounds = None if bounds is None else check_bounds(bounds)
        # One reduction and one transfer of a few numbers, not a copy of x: NaN propagates into the
        # minimum and maximum, and an infinity is one of them.
        values: list[Tensor] = list(torch.aminmax(x.detach()))
        #: whether the labels' range is among the values (an integer tensor on x's device)
        self.reads_labels = _integer_labels(labels) and labels.device == x.device
        if self.reads_labels:
            # The labels as float32 (float64 beside a float64 input): one cast of the small label
            # tensor, and the numbers stacked in one kernel (no cast of each). Rounding to nearest
            # keeps the order and every integer below 2**24 (2**53) is exact, so a range within
            # that is the labels' own; beyond it (never class indices) it is read again exactly.
            wide = torch.float64 if x.dtype == torch.float64 else torch.float32
            values += torch.aminmax(labels.detach().to(wide))
        if self.bounds is not None and not self.bounds.scalar:
            values.append(self.bounds.outside_flag(x.detach(), tol))
        self.values = torch.stack(values)

    def judge(self, numbers: list[float], labels: bool = True) -> tuple[int, int] | None:
        """Raise for an input that is not finite or lies outside the bounds, given :attr:`values`
        read (``numbers``); return the labels' ``(min, max)`` (``None``: not an integer tensor, or
        not asked for: ``labels=False`` reads nothing more)."""
        xmin, xmax = float(numbers[0]), float(numbers[1])
        exact = 2.0**53 if self.x.dtype == torch.float64 else 2.0**24
        known: tuple[int, int] | None = None
        if self.reads_labels and -exact < numbers[2] <= numbers[3] < exact:
            known = (int(numbers[2]), int(numbers[3]))
        elif labels:
            known = label_range(self.labels)  # not among the numbers, or beyond their exact range
        if not (math.isfinite(xmin) and math.isfinite(xmax)):
            bad = int((~torch.isfinite(self.x)).sum())
            raise ValueError(f"{self.name} must be finite, got {bad} NaN/inf values")
        b = self.bounds
        if b is not None:
            if b.scalar:  # the minimum and maximum in hand decide it
                low, high = b
                out = xmin < float(low) - self.tol or xmax > float(high) + self.tol
            else:
                out = numbers[-1] > 0
            if out:
                raise ValueError(
                    f"{self.name} must lie within bounds {_bounds_text(b)}, got values in [{xmin:.6g}, {xmax:.6g}]"
                )
        return known


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


class ReadLater:
    """``known_range`` of labels whose range is read after the work, with the call's other
    numbers (:class:`InputChecks`): :func:`check_labels` clamps them into range meanwhile (an
    index out of range would abort a CUDA kernel) and :func:`check_label_range` judges them."""

    def __repr__(self) -> str:
        return "READ_LATER"


READ_LATER = ReadLater()


def check_labels(
    labels: Any,
    batch: int,
    num_classes: int,
    name: str = "y",
    device: torch.device | None = None,
    known_range: tuple[int, int] | ReadLater | None = None,
) -> Tensor:
    """Return ``labels`` as a long tensor ``(batch,)`` of class indices in ``[0, num_classes)``.

    Accepts an int or a 0-d tensor (used for every sample), a sequence, or a tensor. ``known_range``: the
    labels' ``(min, max)`` when the caller has read it already (:func:`label_range`), so
    that checking costs no transfer from the device here; :data:`READ_LATER` when the caller
    reads it after its work (the labels are returned clamped into range until then).
    """
    if isinstance(labels, bool):
        raise ValueError(f"{name} must be class indices, got {labels!r}")
    if isinstance(labels, int):
        labels = torch.full((batch,), labels, dtype=torch.long)
    labels = as_index_tensor(labels, name)
    if labels.dim() == 0:  # one class for every sample, as an int is (and as captum takes it)
        labels = labels.reshape(1).repeat(batch)
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(labels.shape)}")
    if isinstance(known_range, ReadLater):
        if num_classes >= 1:  # (no class at all: refused now, nothing to clamp into)
            return labels.to(device=device, dtype=torch.long).clamp(0, num_classes - 1)
        known_range = None
    if labels.numel():
        read = known_range if known_range is not None else label_range(labels)
        if read is not None:  # (always: as_index_tensor gave an integer tensor)
            check_label_range(read, num_classes, name)
    return labels.to(device=device, dtype=torch.long)


def check_class_scores(out: Tensor, user: str) -> None:
    """Refuse a classifier's outputs that are not ``(B, classes)`` with at least two classes:
    with one score, the arg-max is always class 0 and no attack can change it (``user``: who needs them)."""
    if out.dim() != 2:
        raise ValueError(f"model must return (B, classes) logits for {user}, got output of shape {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ValueError(
            f"model must return one score per class, at least 2, for {user}, got output of shape {tuple(out.shape)} "
            "(a binary classifier's one logit z: return torch.cat([torch.zeros_like(z), z], dim=1), the same probabilities)"
        )


def check_label_range(known_range: tuple[int, int], num_classes: int, name: str = "y") -> None:
    """Refuse labels whose ``(min, max)`` is not within ``[0, num_classes)``."""
    low, high = known_range
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} must be class indices in [0, {num_classes - 1}], got values in [{low}, {high}]")


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
    "MAX_SEED", "READ_LATER", "Bounds", "BoundsLike", "InputChecks", "ReadLater", "as_index_tensor", "check_bounds",
    "check_choice", "check_class_scores", "check_flag", "check_input", "check_input_and_labels", "check_label_range", "check_labels", "check_number",
    "label_range", "check_seed", "check_shape", "clip_features",
]
