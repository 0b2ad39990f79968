"""The models and helpers the tests of occlusion's region-held copies share
(``test_occlusion_regions``, ``test_occlusion_region_batches``, ``test_occlusion_layouts``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import salmap.explain.occlusion_deltas as deltas_module
import salmap.explain.occlusion_region_ops as region_ops
import salmap.explain.occlusion_windows as occlusion_windows
from salmap.explain import Occlusion
from salmap.explain.occlusion_regions import Region


class Block(nn.Module):
    """A residual block: 3x3 convolutions, batch norm, a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride > 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn_a(self.a(x)))
        return torch.relu(self.bn_b(self.b(y)) + self.short(x))


class ResNetLike(nn.Module):
    """Stem (7x7 stride 2, max pooling with padding), two residual stages, global mean, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.one = Block(8, 8, 1)
        self.two = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.two(self.one(self.stem(x)))).flatten(1))


class Assorted(nn.Module):
    """Grouped, rectangular and asymmetrically padded convolutions, average pooling, a constant
    scale, GELU, a spatial mean taken as a method."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, (5, 3), (1, 2), (2, 0))
        self.b = nn.Conv2d(4, 4, 3, 1, 1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.c = nn.Conv2d(4, 6, 3, 2, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.b(torch.sigmoid(self.a(x)) * 0.5))
        y = -self.c(self.pool(y))
        return self.head(y.mean((2, 3)))


class Segmenter(nn.Module):
    """A spatial output: the regions are written out at full size for it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, 1, 1)
        self.b = nn.Conv2d(6, 3, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class Crossed(nn.Module):
    """The sum of a 1x3 and a 3x1 convolution: regions of the same area, neither inside the other."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, (1, 3), 1, (0, 1))
        self.b = nn.Conv2d(2, 4, (3, 1), 1, (1, 0))
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(torch.relu(self.a(x) + self.b(x)), 1).flatten(1))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.double().eval()


CASES = [
    ("resnet", ResNetLike, 3, (37, 29), (5, 5), (3, 4)),
    ("assorted", Assorted, 2, (24, 26), (3, 5), (2, 3)),
]


def grow_as_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of region-held copies grow on the CPU as they do on CUDA (``occlusion_windows.grows``)."""
    monkeypatch.setattr(occlusion_windows, "grows", lambda device: True)


def maps(model: nn.Module, x: Tensor, target: object, **kwargs: object) -> Tensor:
    return Occlusion(model, **kwargs).attribute(x, target=target)  # type: ignore[arg-type]


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The region sizes of every sliding window the regions ran."""
    sizes: list[tuple[int, int]] = []
    original = region_ops.window_of

    def spy(region: Region, *args: object) -> object:
        sizes.append(region.size)
        return original(region, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(region_ops, "window_of", spy)
    return sizes


class OpNames(TorchDispatchMode):
    """The names of the operators dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.fixture
def batch_ops(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The operators of every batch of region-held copies, in order."""
    calls: list[list[str]] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        with OpNames() as names:
            out = original(self, images, i, patches, region)
        calls.append(names.names)
        return out

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    return calls
