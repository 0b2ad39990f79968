"""ResNet-18 and ResNet-34 (He et al. 2016), written here with the familiar module names.

Module names follow the common layout: ``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1``..``layer4``, ``avgpool``, ``fc``. ``stem="standard"`` is the ImageNet stem
(7x7 stride-2 convolution and max pooling); ``stem="small"`` is a 3x3 stride-1
convolution without pooling, for 28x28 and 32x32 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from salmap._validate import check_choice, check_number
from salmap.models.registry import register


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages.

    Parameters
    ----------
    layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    in_channels: input channels.
    num_classes: number of output logits.
    stem: ``"standard"`` (7x7/2 conv + max pool) or ``"small"`` (3x3/1 conv, no pool).
    width: channels of the first stage (64 in the paper).
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        num_classes: int = 1000,
        stem: str = "standard",
        width: int = 64,
    ) -> None:
        super().__init__()
        check_number("in_channels", in_channels, low=1, integer=True)
        check_number("num_classes", num_classes, low=2, high=100_000, integer=True)
        check_number("width", width, low=1, integer=True)
        check_choice("stem", stem, ["standard", "small"])
        if stem == "standard":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes = [width, width * 2, width * 4, width * 8]
        self.layer1 = self._stage(width, planes[0], layers[0], 1)
        self.layer2 = self._stage(planes[0], planes[1], layers[1], 2)
        self.layer3 = self._stage(planes[1], planes[2], layers[2], 2)
        self.layer4 = self._stage(planes[2], planes[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        mods = [BasicBlock(in_planes, planes, stride)]
        mods += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 1000, stem: str = "standard", width: int = 64) -> ResNet:
    """ResNet-18: stages of (2, 2, 2, 2) basic blocks."""
    return ResNet((2, 2, 2, 2), in_channels, num_classes, stem, width)


@register("resnet34")
def resnet34(in_channels: int = 3, num_classes: int = 1000, stem: str = "standard", width: int = 64) -> ResNet:
    """ResNet-34: stages of (3, 4, 6, 3) basic blocks."""
    return ResNet((3, 4, 6, 3), in_channels, num_classes, stem, width)
