"""The valid range of input features: :class:`Bounds` and :func:`check_bounds`.

Attacks, explainers and defenses take ``bounds=`` as ``(low, high)`` (numbers, per-channel
sequences or tensors); :func:`check_bounds` turns it into a :class:`Bounds` once, and the
algorithms clamp, measure and index features through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from salmap._repr import short as _short


def check_bounds(bounds: Any, name: str = "bounds") -> Bounds:
    """Return ``bounds`` as a :class:`Bounds`: finite, ``low < high`` for every feature.

    ``bounds`` is a pair ``(low, high)`` of numbers (one range for every feature), of
    per-channel sequences such as ``((0, 0, 0), (1, 1, 1))`` (1-D: one value per channel,
    dimension 1 of the input), or of tensors broadcastable to one sample or to the batch.
    A :class:`Bounds` is returned as it is.
    """
    if isinstance(bounds, Bounds):
        return bounds
    if isinstance(bounds, Tensor) and bounds.dim() >= 1 and bounds.shape[0] == 2:
        bounds = (bounds[0], bounds[1])
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {_short(bounds)}") from None
    try:
        lo = torch.as_tensor(low, dtype=torch.float64).detach().cpu()
        hi = torch.as_tensor(high, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers or tensors, got {_short(bounds)}") from None
    try:
        lo_b, hi_b = torch.broadcast_tensors(lo, hi)
    except RuntimeError:
        raise ValueError(
            f"{name}: low and high must have broadcastable shapes, got {tuple(lo.shape)} and {tuple(hi.shape)}"
        ) from None
    if lo_b.numel() == 0 or not (torch.isfinite(lo_b).all() and torch.isfinite(hi_b).all()):
        raise ValueError(f"{name} must be finite with low < high, got ({_short(low)}, {_short(high)})")
    if not bool((lo_b < hi_b).all()):
        raise ValueError(f"{name} must be finite with low < high, got ({_short(low)}, {_short(high)})")
    if lo_b.numel() == 1:
        return Bounds(float(lo_b.reshape(())), float(hi_b.reshape(())))
    return Bounds(lo_b.to(torch.float32).contiguous(), hi_b.to(torch.float32).contiguous())


class Bounds:
    """The valid range of every input feature: ``low`` and ``high``, scalars or tensors.

    Scalars (``Bounds(0.0, 1.0)``) apply to every feature. A 1-D tensor holds one value per
    channel (dimension 1 of the input); a tensor of more dimensions is broadcast against the
    input as it is (``(C, H, W)`` per feature, ``(1, C, 1, 1)`` per channel). Build one with
    :func:`check_bounds`. It unpacks as ``low, high = bounds``; algorithms use
    :meth:`like` (bounds on an input's device, shaped to broadcast with it) and :meth:`clamp`.
    """

    __slots__ = ("low", "high", "_cache")

    def __init__(self, low: float | Tensor, high: float | Tensor) -> None:
        self.low = low
        self.high = high
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    @property
    def scalar(self) -> bool:
        """Whether one range applies to every feature."""
        return not isinstance(self.low, Tensor)

    def __iter__(self) -> Iterator[float | Tensor]:
        yield self.low
        yield self.high

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> float | Tensor:
        return (self.low, self.high)[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Bounds, tuple, list)) and len(other) == 2:
            a, b = other
            if self.scalar:
                return not isinstance(a, Tensor) and not isinstance(b, Tensor) and (self.low, self.high) == (a, b)
            try:
                other_b = check_bounds((a, b))
            except ValueError:
                return False
            return (not other_b.scalar and torch.equal(self.low, other_b.low)  # type: ignore[arg-type]
                    and torch.equal(self.high, other_b.high))  # type: ignore[arg-type]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bounds({self.tolist()[0]!r}, {self.tolist()[1]!r})"

    def tolist(self) -> list[Any]:
        """``[low, high]`` as numbers or nested lists (for JSON)."""
        return [v.tolist() if isinstance(v, Tensor) else v for v in (self.low, self.high)]

    def like(self, x: Tensor) -> tuple[float, float] | tuple[Tensor, Tensor]:
        """``(low, high)`` ready to broadcast with ``x``: floats, or tensors on ``x``'s device and dtype.

        A per-channel (1-D) pair is shaped ``(1, C, 1, ...)``; its length must be ``x.shape[1]``.
        """
        if self.scalar:
            return self.low, self.high  # type: ignore[return-value]
        key = (x.device, x.dtype, tuple(x.shape[1:]))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        low, high = self.low, self.high
        assert isinstance(low, Tensor) and isinstance(high, Tensor)
        if low.dim() == 1:
            if x.dim() < 2 or x.shape[1] != low.shape[0]:
                raise ValueError(
                    f"bounds have {low.shape[0]} channels but x has shape {tuple(x.shape)} "
                    f"({x.shape[1] if x.dim() >= 2 else 'no'} channels in dimension 1)"
                )
            shape = (1, low.shape[0]) + (1,) * (x.dim() - 2)
            low, high = low.reshape(shape), high.reshape(shape)
        try:
            torch.broadcast_shapes(low.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"bounds of shape {tuple(self.low.shape)} do not broadcast to x of shape {tuple(x.shape)}"  # type: ignore[union-attr]
            ) from None
        pair = (low.to(device=x.device, dtype=x.dtype), high.to(device=x.device, dtype=x.dtype))
        self._cache[key] = pair
        return pair

    def clamp(self, x: Tensor) -> Tensor:
        """``x`` clipped into the bounds, feature by feature."""
        low, high = self.like(x)
        return torch.clamp(x, low, high)  # type: ignore[arg-type]

    def features(self, x: Tensor) -> tuple[float, float] | tuple[Tensor, Tensor]:
        """The bounds of each feature of flattened samples: floats, or ``(1, features)`` tensors
        for ``x.reshape(B, -1)``."""
        if self.scalar:
            return self.low, self.high  # type: ignore[return-value]
        low, high = self.like(x)
        assert isinstance(low, Tensor) and isinstance(high, Tensor)
        shape = (1,) + tuple(x.shape[1:])
        return low.expand(torch.broadcast_shapes(low.shape, shape)).reshape(1, -1), high.expand(
            torch.broadcast_shapes(high.shape, shape)
        ).reshape(1, -1)

    def range(self, x: Tensor) -> float | Tensor:
        """``high - low`` ready to broadcast with ``x``."""
        low, high = self.like(x)
        return high - low

    def outside(self, x: Tensor, tol: float = 1e-6) -> bool:
        """Whether some feature of ``x`` lies outside the bounds by more than ``tol``."""
        return bool(self.outside_flag(x, tol))

    def outside_flag(self, x: Tensor, tol: float = 1e-6) -> Tensor:
        """:meth:`outside` as a boolean tensor on ``x``'s device, not read."""
        low, high = self.like(x)
        return ((x < low - tol) | (x > high + tol)).any()


def clip_features(values: Tensor, low: float | Tensor, high: float | Tensor, index: Tensor) -> Tensor:
    """``values`` of the flat features ``index`` clipped to their bounds.

    ``low``/``high`` are what :meth:`Bounds.features` returns: floats, or ``(1, n)`` tensors
    indexed by ``index`` (any shape of feature indices, like ``values``).
    """
    if isinstance(low, Tensor) and isinstance(high, Tensor):
        return torch.clamp(values, low[0][index], high[0][index])
    return values.clamp(low, high)  # type: ignore[arg-type]


#: What a ``bounds=`` argument accepts: ``(low, high)`` of numbers, per-channel sequences or
#: tensors, or a :class:`Bounds`.
BoundsLike = Bounds | tuple[Any, Any] | Tensor
