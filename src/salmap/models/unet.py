"""A small U-Net (Ronneberger et al. 2015) for segmentation, any channels and classes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salmap._validate import check_number
from salmap.models.registry import register


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; output ``(B, num_classes, H, W)``.

    With ``num_classes=1`` the single channel is a binary logit (apply a sigmoid);
    otherwise the channels are class logits (softmax over dim 1).

    Parameters
    ----------
    in_channels: input channels.
    num_classes: output channels (1 for a binary segmenter).
    base: channels of the first level (doubled at each level down).
    depth: number of down-sampling steps; ``H`` and ``W`` must be divisible by ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 16, depth: int = 3) -> None:
        super().__init__()
        check_number("in_channels", in_channels, low=1, integer=True)
        check_number("num_classes", num_classes, low=1, high=100_000, integer=True)
        check_number("base", base, low=1, integer=True)
        check_number("depth", depth, low=1, integer=True)
        self.depth = depth
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, chans[0])])
        self.down.extend(_double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_double_conv(chans[i] * 2, chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(
                f"x spatial size must be divisible by {2**self.depth} for a depth-{self.depth} unet, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


@register("unet")
def unet(in_channels: int = 1, num_classes: int = 2, base: int = 16, depth: int = 3) -> UNet:
    """Build a :class:`UNet`."""
    return UNet(in_channels, num_classes, base, depth)
