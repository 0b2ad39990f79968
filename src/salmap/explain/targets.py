"""What a "target" means for classifiers and segmenters.

A :class:`Target` turns model outputs into one score per sample, and gives the
cotangent (the weights on the outputs) whose VJP is that score's gradient.
Classifier: the logit of a class. Segmenter: the sum of a class's scores over a
pixel mask, so that a user can ask "why is this region labelled a 7?".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from salmap._validate import check_labels


@dataclass
class Target:
    """Resolved target: ``classes`` ``(B,)`` and, for segmenters, a pixel ``mask`` ``(B, H, W)``."""

    classes: Tensor
    mask: Tensor | None = None

    def weights(self, out: Tensor) -> Tensor:
        """The cotangent on ``out``: one-hot class (times the pixel mask for segmenters)."""
        if out.dim() == 2:
            return self._one_hot(out)
        if out.shape[1] == 1:
            # Binary segmenter: one logit channel; class 1 scores +logit, class 0 scores -logit.
            sign = (2 * self.classes - 1).to(out.dtype)
            w = sign[:, None, None] * self._mask(out)
            return w[:, None]
        return self._one_hot(out)[:, :, None, None] * self._mask(out)[:, None]

    def score(self, out: Tensor) -> Tensor:
        """One score per sample: ``(weights(out) * out)`` summed over everything but the batch (for
        classifiers, the target class's output itself)."""
        if out.dim() == 2:
            return out.gather(1, self.classes[:, None])[:, 0]
        return (self.weights(out) * out).flatten(1).sum(dim=1)

    def _one_hot(self, out: Tensor) -> Tensor:
        # a scatter, not one_hot, which reads the classes' range back from the device (they were
        # checked when the target was resolved)
        return torch.zeros(out.shape[:2], dtype=out.dtype, device=out.device).scatter_(1, self.classes[:, None], 1.0)

    def _mask(self, out: Tensor) -> Tensor:
        if self.mask is None:
            raise ValueError(f"a segmentation target needs a pixel mask; the model returned shape {tuple(out.shape)}")
        return self.mask.to(out.dtype)

    def select(self, index: Tensor) -> Target:
        """The target of a subset of the batch."""
        return Target(self.classes[index], None if self.mask is None else self.mask[index])


def resolve_target(out: Tensor, target: Any = None, mask: Tensor | None = None) -> Target:
    """Build a :class:`Target` from the user's ``target``/``mask`` and the model's outputs ``out``.

    Default class: the predicted class (arg-max; for binary segmenters, class 1 where any
    pixel is positive). Default mask for segmenters: the pixels predicted as the target class.
    """
    batch = out.shape[0]
    if out.dim() == 2:
        if mask is not None:
            raise ValueError("mask is only for segmenters; the model returned (B, classes) logits")
        classes = out.argmax(dim=1) if target is None else check_labels(target, batch, out.shape[1], "target", out.device)
        return Target(classes)
    if out.dim() != 4:
        raise ValueError(f"model output must be (B, classes) or (B, classes, H, W), got shape {tuple(out.shape)}")
    binary = out.shape[1] == 1
    pred = (out[:, 0] > 0).long() if binary else out.argmax(dim=1)
    num_classes = 2 if binary else out.shape[1]
    if target is None:
        classes = torch.ones(batch, dtype=torch.long, device=out.device) if binary else _majority_foreground(pred)
    else:
        classes = check_labels(target, batch, num_classes, "target", out.device)
    spatial = tuple(out.shape[-2:])
    if mask is None:
        m = pred == classes[:, None, None]
    else:
        if not isinstance(mask, Tensor):
            raise ValueError(f"mask must be a tensor of shape {spatial} or (B, H, W), got {type(mask).__name__}")
        if tuple(mask.shape) == spatial:
            mask = mask.expand(batch, *spatial)
        if tuple(mask.shape) != (batch, *spatial):
            raise ValueError(f"mask must have shape {spatial} or {(batch, *spatial)}, got {tuple(mask.shape)}")
        m = mask.to(out.device).bool()
    return Target(classes, m)


def _majority_foreground(pred: Tensor) -> Tensor:
    """Per sample, the most frequent predicted class other than 0 (background), else 0.

    Ties go to the smaller class index. Counted for the whole batch at once with one
    ``scatter_add`` (no loop over samples).
    """
    flat = pred.flatten(1)
    num_classes = int(flat.max()) + 1
    counts = torch.zeros(flat.shape[0], num_classes, dtype=torch.long, device=pred.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    if num_classes == 1:
        return torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
    fg = counts[:, 1:]
    return torch.where(fg.sum(dim=1) > 0, fg.argmax(dim=1) + 1, torch.zeros_like(fg[:, 0]))
