"""The small CNN the defense tests train on the 8x8 digits, registered once in the zoo."""

from __future__ import annotations

from torch import nn

from salmap import models

TINY = "tiny-defense-test-cnn"
ARCH = {"name": TINY, "kwargs": {"in_channels": 1, "num_classes": 10}}


@models.register(TINY)
def tiny_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    """conv-ReLU-pool | flatten-fc-ReLU-fc on 8x8 digits (two blocks: lower and upper part)."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 32), nn.ReLU(), nn.Linear(32, num_classes)),
    )
