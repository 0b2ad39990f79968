"""Distortion and accuracy metrics, shared by attacks, defenses and the evaluation."""

from __future__ import annotations

import torch
from torch import Tensor


def distortion(x: Tensor, x_adv: Tensor, atol: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample L0 (count of changed features), L2 and Linf distances between two batches.

    A feature counts as changed when ``|x_adv - x| > atol``.
    """
    delta = (x_adv - x).reshape(x.shape[0], -1).float()
    l0 = (delta.abs() > atol).sum(dim=1).float()
    l2 = delta.norm(p=2, dim=1)
    linf = delta.abs().amax(dim=1) if delta.shape[1] else torch.zeros_like(l2)
    return l0, l2, linf


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose arg-max class equals the label."""
    if labels.numel() == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == labels).float().mean())
