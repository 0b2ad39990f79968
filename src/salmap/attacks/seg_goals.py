"""Goals and regions of segmentation attacks: target masks for common goals, and where changes may go.

Target masks for :class:`salmap.attacks.SegmentationJSMA`: :func:`hide_object`,
:func:`relabel_class`, :func:`add_mask_of` (from the model's own masks, :func:`predict_masks`);
regions of changeable input features: :func:`outside` and :func:`region_mask`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from salmap.gradients import Model, frozen, predict
from salmap.metrics import mask_from_output

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


def predict_masks(model: Model, x: Tensor, batch_size: int = 64) -> Tensor:
    """The model's class-index masks ``(B, H, W)`` for ``x`` (model frozen, then restored)."""
    with frozen(model):
        return mask_from_output(predict(model, x, batch_size))


def hide_object(
    mask: Tensor, object_mask: Tensor | None = None, classes: int | list[int] | None = None, background: int = 0
) -> Tensor:
    """Target that hides objects: their pixels become ``background``.

    Which pixels: ``object_mask`` (bool ``(B, H, W)``) when given, else the pixels of the
    given ``classes``, else every pixel that is not already background.

    Examples
    --------
    >>> hide_object(torch.tensor([[[0, 1], [2, 0]]]), classes=2)
    tensor([[[0, 1],
             [0, 0]]])
    """
    if object_mask is not None:
        if object_mask.shape != mask.shape:
            raise ValueError(f"object_mask must have the shape of mask {tuple(mask.shape)}, got {tuple(object_mask.shape)}")
        hide = object_mask.bool()
    elif classes is not None:
        wanted = torch.as_tensor([classes] if isinstance(classes, int) else list(classes), device=mask.device)
        hide = torch.isin(mask, wanted)
    else:
        hide = mask != background
    return torch.where(hide, torch.full_like(mask, background), mask)


def relabel_class(mask: Tensor, source: int | Tensor, target: int | Tensor) -> Tensor:
    """Target in which the pixels of class ``source`` become class ``target`` (ints, or ``(B,)`` per image).

    Examples
    --------
    >>> relabel_class(torch.tensor([[[0, 3], [3, 1]]]), 3, 5)
    tensor([[[0, 5],
             [5, 1]]])
    """
    src = torch.as_tensor(source, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    dst = torch.as_tensor(target, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    return torch.where(mask == src, dst.to(mask.dtype).expand_as(mask), mask)


def add_mask_of(mask: Tensor, other: Tensor, background: int = 0) -> Tensor:
    """Target that adds the objects of another image's mask: ``other`` wherever it is not background.

    Examples
    --------
    >>> add_mask_of(torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([[[0, 0], [2, 0]]]))
    tensor([[[1, 0],
             [2, 0]]])
    """
    if other.shape != mask.shape:
        raise ValueError(f"other must have the shape of mask {tuple(mask.shape)}, got {tuple(other.shape)}")
    return torch.where(other != background, other, mask)


def outside(prediction_classes: int | None = None, background: int = 0) -> RegionFn:
    """A ``region`` callable: only input pixels outside the objects of the clean prediction may change.

    With ``prediction_classes`` only that class counts as the object. Needs output and input
    of one spatial size (the prediction is resized to the input's otherwise).
    """

    def region(x: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        obj = prediction != background if prediction_classes is None else prediction == prediction_classes
        return resize_mask(~obj, x.shape[-2:]).bool()

    return region
