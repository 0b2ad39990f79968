"""What the JSMA tests share (``test_jsma``, ``test_jsma_properties``): seeded random MLPs, batches
with features at and near the bounds, and target classes other than a prediction."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def random_mlp(features: int, classes: int, seed: int, hidden: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes)
    ).double().eval()


def random_batch(batch: int, shape: tuple[int, ...], seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=gen, dtype=torch.float64)
    # some features at each bound, so the initial search domain matters, and some within the
    # saturation margin of one (0.995 and 0.005 with the default margin 0.01)
    x[x < 0.15] = 0.0
    x[x > 0.85] = 1.0
    x[(x > 0.5) & (x < 0.55)] = 0.995
    x[(x > 0.45) & (x < 0.5)] = 0.005
    return x


def other_than(pred: Tensor, classes: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (pred + torch.randint(1, classes, pred.shape, generator=gen)) % classes
