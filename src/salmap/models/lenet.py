"""The MNIST network of Papernot et al. 2016 and the cleverhans JSMA tutorial."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from salmap._validate import check_number
from salmap.models.registry import register

#: Limits of the architecture: a fully connected net whose first linear layer grows with the
#: image (512x512 already gives it 200M weights).
MIN_SIDE, MAX_SIDE, MAX_CLASSES = 16, 512, 100_000


def _input_size(input_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = input_size
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be a pair (H, W) of integers, got {input_size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
        raise ValueError(f"input_size must be a pair (H, W) of integers, got {input_size!r}")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(
            f"input_size must be between {MIN_SIDE}x{MIN_SIDE} and {MAX_SIDE}x{MAX_SIDE} for lenet, got {(h, w)}"
        )
    return h, w


def _feature_size(side: int) -> int:
    """Size of one spatial side after the unpadded 3x3 convolutions and 2x2 poolings."""
    return ((side - 4) // 2 - 4) // 2


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
        check_number("num_classes", num_classes, low=2, high=MAX_CLASSES, integer=True)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        size = _input_size(input_size)
        self.in_channels, self.input_size = int(in_channels), size
        width = 64 * math.prod(_feature_size(s) for s in size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width, 200), nn.ReLU(),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        c, (h, w) = self.in_channels, self.input_size
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != h or x.shape[3] != w:
            raise ValueError(f"lenet expects inputs of shape (B, {c}, {h}, {w}), got {list(x.shape)}")
        return self.classifier(self.features(x))


@register("lenet")
def lenet(in_channels: int = 1, num_classes: int = 10, input_size: Sequence[int] = (28, 28)) -> LeNet:
    """Build the Papernot et al. MNIST network (see :class:`LeNet`)."""
    return LeNet(in_channels=in_channels, num_classes=num_classes, input_size=tuple(input_size))
