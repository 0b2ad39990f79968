"""The MNIST network of Papernot et al. 2016 and the cleverhans JSMA tutorial."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from salmap._validate import check_number
from salmap.models.registry import register


class LeNet(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc(classes), ReLU, 3x3 convolutions.

    Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", 2016
    (Table 1's MNIST architecture). Convolutions are unpadded, as in the paper.

    Parameters
    ----------
    in_channels: input channels (1 for MNIST).
    num_classes: number of output logits.
    input_size: spatial size ``(H, W)`` of the input; sets the first linear layer's width.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: Sequence[int] = (28, 28)) -> None:
        super().__init__()
        check_number("in_channels", in_channels, low=1, integer=True)
        check_number("num_classes", num_classes, low=2, integer=True)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        h, w = (int(s) for s in input_size)
        with torch.no_grad():
            try:
                width = self.features(torch.zeros(1, in_channels, h, w)).numel()
            except RuntimeError:
                raise ValueError(f"input_size must be at least 16x16 for lenet, got {tuple(input_size)}") from None
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width, 200), nn.ReLU(),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register("lenet")
def lenet(in_channels: int = 1, num_classes: int = 10, input_size: Sequence[int] = (28, 28)) -> LeNet:
    """Build the Papernot et al. MNIST network (see :class:`LeNet`)."""
    return LeNet(in_channels=in_channels, num_classes=num_classes, input_size=tuple(input_size))
