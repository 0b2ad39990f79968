"""Where a segmentation attack may change the input: :func:`region_mask` and :func:`outside`.

The target masks of segmentation goals (:func:`hide_object`, :func:`relabel_class`,
:func:`add_mask_of`, from the model's own masks, :func:`predict_masks`) are in
:mod:`salmap.targets`, the one module for targets and goals; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from salmap.metrics import mask_from_output
from salmap.targets import add_mask_of, hide_object, predict_masks, relabel_class

__all__ = [
    "RegionFn", "add_mask_of", "hide_object", "outside", "predict_masks", "region_mask", "relabel_class", "resize_mask",
]

#: ``region(x, target, clean_prediction) -> bool mask`` of the input features that may change.
RegionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def resize_mask(mask: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """A ``(B, h, w)`` mask at the input's spatial ``size`` (nearest neighbour), as float."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return torch.nn.functional.interpolate(mask[:, None], size=tuple(size), mode="nearest")[:, 0]


def region_mask(region: Tensor | RegionFn | None, x: Tensor, target: Tensor, clean: Tensor) -> Tensor:
    """The bool mask of the input features an attack may change, shaped like ``x``.

    ``region`` is ``None`` (all), a bool tensor of shape ``x.shape``, ``x.shape[1:]``,
    ``(B, H, W)`` or ``(H, W)`` (broadcast over channels), or
    ``region(x, target, clean_prediction) -> mask``; ``clean`` are the model's outputs on ``x``.
    """
    if region is None:
        return torch.ones_like(x, dtype=torch.bool)
    if not isinstance(region, Tensor):
        region = region(x, target, mask_from_output(clean))
        if not isinstance(region, Tensor):
            raise ValueError(f"region(x, target, prediction) must return a tensor, got {type(region).__name__}")
    batch, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    shape = tuple(region.shape)
    if shape == tuple(x.shape):
        mask = region
    elif shape == tuple(x.shape[1:]):
        mask = region.expand_as(x)
    elif shape == (batch, h, w) and x.dim() == 4:
        mask = region[:, None].expand_as(x)
    elif shape == (h, w) and x.dim() == 4:
        mask = region.expand_as(x)
    else:
        raise ValueError(
            f"region must be a mask of shape {tuple(x.shape)}, {tuple(x.shape[1:])}, "
            f"({batch}, {h}, {w}) or ({h}, {w}), got shape {shape}"
        )
    return mask.to(device=x.device, dtype=torch.bool)


def outside(prediction_classes: int | None = None, background: int = 0) -> RegionFn:
    """A ``region`` callable: only input pixels outside the objects of the clean prediction may change.

    With ``prediction_classes`` only that class counts as the object. Needs output and input
    of one spatial size (the prediction is resized to the input's otherwise).
    """

    def region(x: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        obj = prediction != background if prediction_classes is None else prediction == prediction_classes
        return resize_mask(~obj, x.shape[-2:]).bool()

    return region
