"""Metrics: success, distortion (L0/L2/Linf), accuracies and segmentation overlaps.

Floor 1: attacks, defenses, the evaluation and the figures all read them from here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from salmap._validate import as_index_tensor

__all__ = [
    "accuracy", "budget_curve", "confusion_matrix", "distortion", "iou_per_class", "mask_from_output", "mean_iou",
    "pair_rates", "pixel_accuracy", "segmentation_iou",
]


def distortion(x: Tensor, x_adv: Tensor, atol: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample L0 (count of changed features), L2 and Linf distances between two batches.

    A feature counts as changed when ``|x_adv - x| > atol``.
    """
    delta = (x_adv - x).reshape(x.shape[0], -1).float()
    l0 = (delta.abs() > atol).sum(dim=1).float()
    l2 = delta.norm(p=2, dim=1)
    linf = delta.abs().amax(dim=1) if delta.shape[1] else torch.zeros_like(l2)
    return l0, l2, linf


def accuracy(logits: Tensor, labels: Any) -> float:
    """Fraction of samples whose arg-max class equals the label (``labels``: class indices shaped like
    ``logits.argmax(dim=1)``, a tensor, list or array; masks ``(B, H, W)`` for ``(B, K, H, W)``: pixels)."""
    labels = as_index_tensor(labels, "labels")
    shape = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != shape:  # ((B, 1) against (B,) would broadcast to a (B, B) comparison)
        raise ValueError(f"labels must have shape {shape}, one class index per sample of logits "
                         f"{tuple(logits.shape)}, got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Counts ``(num_classes, num_classes)``: row = target class, column = predicted class.

    ``pred`` and ``target`` are class-index tensors of the same shape (e.g. masks ``(B, H, W)``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Intersection over union of every class over all pixels ``(num_classes,)``; NaN for a class
    absent from both ``pred`` and ``target``."""
    cm = confusion_matrix(pred, target, num_classes).double()
    inter = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan"))).float()


def mean_iou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in ``pred`` or ``target`` (pixels pooled over the batch):
    the usual semantic-segmentation mIoU."""
    return float(iou_per_class(pred, target, num_classes).nanmean())


def segmentation_iou(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-image mean IoU ``(B,)`` of masks ``(B, H, W)``, over the classes present in either mask."""
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"pred and target must be masks of one shape (B, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}")
    b = pred.shape[0]
    offset = torch.arange(b, device=pred.device)[:, None] * num_classes
    p = pred.reshape(b, -1).long() + offset
    t = target.reshape(b, -1).long() + offset
    inter = torch.bincount(p[p == t], minlength=b * num_classes).reshape(b, num_classes).float()
    area_p = torch.bincount(p.reshape(-1), minlength=b * num_classes).reshape(b, num_classes).float()
    area_t = torch.bincount(t.reshape(-1), minlength=b * num_classes).reshape(b, num_classes).float()
    union = area_p + area_t - inter
    present = union > 0
    return (inter / union.clamp(min=1) * present).sum(1) / present.sum(1).clamp(min=1)


def pixel_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image fraction of pixels whose predicted class equals the target ``(B,)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred == target).reshape(pred.shape[0], -1).float().mean(dim=1)


def mask_from_output(out: Tensor) -> Tensor:
    """Class-index masks ``(B, H, W)`` from segmenter outputs: a binary ``(B, 1, H, W)`` logit
    is class 1 where positive; ``(B, C, H, W)`` scores give their arg-max class."""
    if out.dim() != 4:
        raise ValueError(f"segmenter output must be (B, classes, H, W), got shape {tuple(out.shape)}")
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(dim=1)


def pair_rates(sources: Tensor, targets: Tensor, values: Tensor, num_classes: int) -> Tensor:
    """The mean of ``values`` per (source, target) pair as a ``(K, K)`` matrix, NaN where no sample is.

    With ``values`` the success flags this is the success rate of each pair of the source-target grid.
    """
    k = num_classes
    cell = (sources.long() * k + targets.long()).cpu()
    counts = torch.bincount(cell, minlength=k * k).float()
    sums = torch.bincount(cell, weights=values.detach().double().cpu(), minlength=k * k).float()
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).view(k, k)


def budget_curve(distortion: Tensor, success: Tensor, budgets: Tensor) -> Tensor:
    """Success rate within each budget: the fraction of samples that succeeded with
    distortion at most the budget (the distortion of failures counts as infinite)."""
    reached = torch.where(success.bool(), distortion.double(), torch.full_like(distortion.double(), float("inf")))
    if reached.numel() == 0:
        return torch.full((budgets.numel(),), float("nan"), dtype=torch.float64)
    return (reached[None, :] <= budgets.double()[:, None]).double().mean(dim=1)
