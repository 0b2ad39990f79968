"""``Normalized``: a model that takes pixels and normalises them itself.

Attacks and explainers work in pixel space (bounds such as ``[0, 1]`` per channel, budgets
in pixel units). A network trained on ``(x - mean) / std`` is wrapped once,
``Normalized(net, mean, std)``, and from then on takes pixels like any other model -- the
wrapper is a plain ``nn.Module``, so gradients flow through the normalisation and every
algorithm sees the composition, exactly as if it had been written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from salmap._repr import short as _short
from salmap._validate import Bounds, check_bounds


def parse_normalization(mean: Any, std: Any, channels: int | None = None) -> tuple[list[float], list[float]]:
    """``mean`` and ``std`` checked: equally long lists of finite numbers, ``std > 0``.

    ``channels``, when known, is the number the lists must have (or 1: the same for every channel).
    Accepts sequences, tensors or comma-separated strings (``"0.485,0.456,0.406"``).
    """
    values = []
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, str):
            try:
                value = [float(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"{name} must be comma-separated numbers, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        try:
            nums = [float(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a sequence of numbers (one per channel), got {_short(value)}") from None
        if not nums or not all(math.isfinite(v) for v in nums):
            raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {_short(value)}")
        values.append(nums)
    m, s = values
    if len(m) != len(s):
        raise ValueError(f"mean and std must have the same length (one value per channel), got {len(m)} and {len(s)}")
    if any(v <= 0 for v in s):
        raise ValueError(f"std must be > 0 for every channel, got {s}")
    if channels is not None and len(m) not in (1, channels):
        raise ValueError(
            f"mean and std must have one value per input channel ({channels}), got {len(m)}: mean {m}, std {s}"
        )
    return m, s


class Normalized(nn.Module):
    """``model`` applied to ``(x - mean) / std``, channel by channel (dimension 1).

    Like foolbox's and ART's ``preprocessing=(mean, std)`` and torchattacks'
    ``set_normalization_used``, but as a module: attack or explain it like any other model,
    with pixel-space bounds.

    Parameters
    ----------
    model: the network that expects normalised input.
    mean, std: one value per channel (or one for all); ``std > 0``.

    Examples
    --------
    >>> model = Normalized(resnet, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # doctest: +SKIP
    >>> PGD(model, eps=8 / 255)(images, y=labels)   # images in [0, 1]                      # doctest: +SKIP
    """

    mean: Tensor
    std: Tensor
    #: salmap's wrappers say so: layer names (Grad-CAM) are also looked up in ``self.model``.
    salmap_wraps = True

    def __init__(self, model: nn.Module, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        m, s = parse_normalization(mean, std)
        self.model = model
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32))

    def _view(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _channel_view(self.mean, x), _channel_view(self.std, x)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std``: what the wrapped model receives."""
        mean, std = self._view(x)
        return (x - mean) / std

    def normalized_bounds(self, bounds: Any, x: Tensor) -> Bounds:
        """``bounds`` (pixel space) mapped to the wrapped model's input space, per channel."""
        low, high = check_bounds(bounds).like(x)
        mean, std = self._view(x)
        return check_bounds(((low - mean) / std, (high - mean) / std))

    def forward(self, x: Tensor) -> Any:
        return self.model(self.normalize(x))

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


@torch.fx.wrap  # one node when torch.fx traces a model (its checks read x's shape)
def _channel_view(stats: Tensor, x: Tensor) -> Tensor:
    """Per-channel ``stats`` ``(C,)`` shaped to broadcast over ``x`` ``(B, C, ...)``, in ``x``'s dtype."""
    c = stats.shape[0]
    if c != 1 and (x.dim() < 2 or x.shape[1] != c):
        raise ValueError(
            f"Normalized has mean/std for {c} channels, but the input has shape {tuple(x.shape)} "
            f"({x.shape[1] if x.dim() >= 2 else 'no'} channels in dimension 1)"
        )
    shape = (1, c) + (1,) * max(x.dim() - 2, 0) if c != 1 else (1,)
    return stats.view(shape).to(x.dtype)


#: it reads only ``x``'s shape and dtype: occlusion's differences treat its value as a constant
_channel_view.reads_only_metadata = True  # type: ignore[attr-defined]


def unwrap(model: Any) -> Any:
    """The innermost model under salmap's wrappers (``Normalized``, ``SelectOutput``, ...)."""
    seen = 0
    while isinstance(model, nn.Module) and getattr(model, "salmap_wraps", False) and seen < 16:
        model = model.model
        seen += 1
    return model
