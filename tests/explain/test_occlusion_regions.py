"""Occlusion on the regions a patch can reach (salmap.explain.occlusion_regions): the same maps as
the model run on every whole occluded copy, on models with every operation the regions know
(strided and grouped convolutions, poolings with padding, residual sums, a spatial output) and
with ones they do not; the regions' arithmetic checked against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import salmap.explain.occlusion_deltas as deltas_module
import salmap.explain.occlusion_region_ops as region_ops
from salmap.explain import Occlusion
from salmap.explain.occlusion_regions import (
    Region,
    crop,
    cut,
    recrop,
    to_full,
    window_input,
    window_of,
)


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


@pytest.mark.parametrize("fill", ["zero", "mean", "random", 0.25])
@pytest.mark.parametrize("name, build, channels, size, patch, stride", CASES)
def test_regions_give_the_maps_of_the_whole_copies(name, build, channels, size, patch, stride, fill, spied):
    model = randomized(build())
    x = torch.rand(2, channels, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        target = model(x).argmax(1)
    kwargs = dict(patch=patch, stride=stride, fill=fill, batch_size=40)
    whole = maps(model, x, target, fold_batchnorm=False, **kwargs)  # the model on every occluded copy
    assert not spied
    got = maps(model, x, target, **kwargs)
    assert spied and min(h * w for h, w in spied) <= patch[0] * patch[1]  # the first layer ran on a region
    torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)


def test_regions_on_a_segmenter_with_a_mask(spied):
    model = randomized(Segmenter())
    x = torch.rand(2, 3, 20, 18, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([0, 2])
    from salmap.explain.targets import Target  # noqa: F401  (the mask form of a target)

    whole = maps(model, x, target, patch=4, stride=3, fold_batchnorm=False)
    got = maps(model, x, target, patch=4, stride=3)
    assert spied
    torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)


def test_regions_that_do_not_nest_fall_back_to_the_full_size(monkeypatch: pytest.MonkeyPatch):
    model = randomized(Crossed())
    x = torch.rand(2, 2, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = torch.tensor([0, 1])
    held = []
    original = deltas_module.Deltas.regions_held

    def spy(self: object) -> bool:
        held.append(original(self))  # type: ignore[arg-type]
        return held[-1]

    monkeypatch.setattr(deltas_module.Deltas, "regions_held", spy)
    whole = maps(model, x, target, patch=3, stride=2, fold_batchnorm=False)
    got = maps(model, x, target, patch=3, stride=2)
    assert held == [False]
    torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sixteen_bit_regions_correlate_with_float32(precision):
    model = randomized(ResNetLike()).float()
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        target = model(x).argmax(1)
    whole = maps(model, x, target, patch=6, stride=4, fold_batchnorm=False)
    got = maps(model, x, target, patch=6, stride=4, precision=precision)
    for a, b in zip(got[:, 0], whole[:, 0], strict=True):
        a, b = a.flatten().double() - a.mean(), b.flatten().double() - b.mean()
        assert float((a * b).sum() / (a.norm() * b.norm())) > 0.999


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_relu_s_difference_in_sixteen_bits_errs_relative_to_the_difference(dtype):
    """The identity the region-held ReLU uses, ``relu(c + d) - relu(c) = max(d, -c) - relu(-c)``,
    with ``-c`` rounded to 16 bits: exact where the sign of ``c + d`` is that of ``c``, and off by
    at most the rounding of values smaller than ``|d|`` where it changes."""
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(100_000, generator=gen, dtype=torch.float64) * 10
    d = torch.randn(100_000, generator=gen, dtype=torch.float64) * torch.rand(100_000, generator=gen,
                                                                              dtype=torch.float64) * 3
    exact = torch.relu(c + d) - torch.relu(c)
    low, negative = d.to(dtype), (-c).to(dtype)
    got = (torch.maximum(low, negative) - negative.clamp(min=0)).double()
    eps, spacing = torch.finfo(dtype).eps, torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # (subnormals')
    assert bool(((got - exact).abs() <= 2 * eps * d.abs() + spacing).all())
    assert bool((got[(c + d > 0) == (c > 0)] == low.double()[(c + d > 0) == (c > 0)])
                .logical_or(got[(c + d > 0) == (c > 0)] == 0).all())


def test_the_caller_s_model_and_input_are_left_as_they_were():
    model = randomized(ResNetLike())
    x = torch.rand(1, 3, 21, 21, dtype=torch.float64)
    before, state = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    maps(model, x, [1], patch=4, stride=4)
    assert torch.equal(x, before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# -- the regions' arithmetic against brute force --------------------------------------------------


def test_crop_and_to_full_against_indexing():
    t = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    starts = torch.tensor([[0, 0], [-2, 5], [4, -1], [6, 8]])
    out = crop(t, starts, (3, 4), fill=-1.0)
    for b, (r, c) in enumerate(starts.tolist()):
        for i, j in itertools.product(range(3), range(4)):
            inside = 0 <= r + i < 7 and 0 <= c + j < 9
            want = t[0, :, r + i, c + j] if inside else torch.full((3,), -1.0, dtype=torch.float64)
            assert torch.equal(out[b, :, i, j], want)
    region = Region(torch.tensor([[0, 0], [4, 5]]), (3, 4), (7, 9))
    d = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    full = to_full(d, region)
    assert full.shape == (2, 3, 7, 9) and full.abs().sum() == d.abs().sum()
    assert torch.equal(crop(full, region.starts, region.size), d)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (7, 2, 3), (3, 2, 1), (1, 2, 0), (2, 2, 0), (4, 3, 2),
                                                     (5, 1, 0), (3, 3, 0), (1, 1, 0), (6, 2, 1), (5, 3, 3)])
def test_a_sliding_window_on_a_region_equals_the_full_convolution(kernel, stride, padding):
    """window_of's region and window_input's cut-out (one gather) against the convolution
    of the whole activation, at random regions of every size, at the borders too."""
    weight = torch.randn(2, 3, kernel, kernel, dtype=torch.float64)
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    for height, width in ((23, 17), (9, 12)):
        out_full = ((height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1)
        for _ in range(40):
            h = int(torch.randint(1, height + 1, (1,), generator=gen))
            w = int(torch.randint(1, width + 1, (1,), generator=gen))
            starts = torch.stack([torch.randint(0, height - h + 1, (6,), generator=gen),
                                  torch.randint(0, width - w + 1, (6,), generator=gen)], 1)
            starts[0] = 0
            starts[1] = torch.tensor([height - h, width - w])
            region = Region(starts, (h, w), (height, width))
            d = torch.randn(6, 3, h, w, dtype=torch.float64, generator=gen)
            want = F.conv2d(to_full(d, region), weight, None, stride, padding)
            out_region, reads, size = window_of(region, (kernel, kernel), (stride, stride), (padding, padding),
                                                out_full)
            cut_out = window_input(d, region, reads, size)
            assert torch.equal(cut_out, crop(d, reads - region.starts, size, fill=0.0))
            got = F.conv2d(cut_out, weight, None, stride)
            assert got.shape[-2:] == out_region.size
            torch.testing.assert_close(to_full(got, out_region), want, rtol=1e-12, atol=1e-12)


def test_recrop_puts_a_region_inside_a_larger_one():
    gen = torch.Generator().manual_seed(7)
    small = Region(torch.tensor([[3, 4], [0, 0], [10, 9]]), (3, 2), (13, 11))
    big = Region(torch.tensor([[1, 2], [0, 0], [8, 6]]), (5, 5), (13, 11))
    d = torch.randn(3, 2, 3, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(to_full(recrop(d, small, big), big), to_full(d, small), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_regions_on_cuda_give_the_maps_of_the_whole_copies(spied):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = randomized(ResNetLike()).float().cuda()
        x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)).cuda()
        with torch.no_grad():
            target = model(x).argmax(1)
        whole = maps(model, x, target, patch=8, stride=4, fold_batchnorm=False, batch_size=64)
        got = maps(model, x, target, patch=8, stride=4, batch_size=64)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert spied and got.device.type == "cuda"
    # float32: a drop is a difference of two logits, good to about 1e-7 of them (3e-5 of the
    # largest drop on the CPU)
    torch.testing.assert_close(got, whole, rtol=1e-3, atol=2e-4 * float(whole.abs().max()))


def test_batches_of_region_held_copies_grow_within_the_memory_of_whole_ones(monkeypatch: pytest.MonkeyPatch):
    """After the first batch, as many more copies as the regions leave room for (at most 16 times)."""
    sizes: list[int] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: object, image: Tensor, key: int, patches: Tensor, region: Region) -> object:
        sizes.append(patches.shape[0])
        return original(self, image, key, patches, region)  # type: ignore[arg-type]

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    target = torch.tensor([1, 2])
    got = maps(model, x, target, patch=4, stride=2, batch_size=100)  # 23 x 23 = 529 copies per image
    assert sizes[0] <= 100 and max(sizes[1:]) > 100 and max(sizes) <= 1600 and sum(sizes) == 2 * 529
    torch.testing.assert_close(got, maps(model, x, target, patch=4, stride=2, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


class ChannelBias(nn.Module):
    """A one-channel activation plus a per-channel constant of three channels: the sum broadcasts
    to three channels (a region-held difference must take that shape too)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 1, 3, 1, 1)
        self.register_buffer("bias", torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1))
        self.b = nn.Conv2d(3, 2, 3, 1, 1)
        self.head = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.b(self.a(x) + self.bias)).mean((2, 3)))


def test_a_constant_that_broadcasts_the_channels():
    model = randomized(ChannelBias())
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    target = torch.tensor([0, 1])
    torch.testing.assert_close(maps(model, x, target, patch=3, stride=3),
                               maps(model, x, target, patch=3, stride=3, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


# -- found in review: each failed before its fix ----------------------------------------------------


class Gate(nn.Module):
    """A 0/1 gate computed from the input (a bool tensor of one value per channel): not a constant."""

    def __init__(self, threshold: float = 0.052) -> None:
        super().__init__()
        self.threshold = threshold
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.head = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.a(x))
        gate = y.mean((2, 3), keepdim=True) > self.threshold
        return self.head(torch.tanh(y * gate).flatten(1))


class BroadcastSum(nn.Module):
    """The sum of an activation and its pooled rows: two sizes, broadcast."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.pool = pool
        self.head = nn.Linear(4 * 8 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.a(x))
        return self.head(torch.tanh(y + self.pool(y)).flatten(1))


class PartialPool(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d((None, 1))
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.a(x))
        y = F.adaptive_avg_pool2d(y, (None, 1)) if self.functional else self.pool(y)
        return self.head(y.flatten(1))


class BatchStatistics(nn.Module):
    """Batch norm without running statistics normalises by the batch's, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.a(x))).mean((2, 3)))


class WritesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x += 0.1
        return self.head(torch.relu(self.a(x)).mean((2, 3)))


def agree(model: nn.Module, x: Tensor, **kwargs: object) -> None:
    target = torch.zeros(x.shape[0], dtype=torch.long)
    torch.testing.assert_close(maps(model, x, target, **kwargs),
                               maps(model, x, target, fold_batchnorm=False, **kwargs), rtol=1e-9, atol=1e-12)


def test_a_gate_computed_from_the_input_is_not_a_constant():
    torch.manual_seed(0)
    model = Gate(threshold=0.005).double().eval()
    x = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    x[:, :, 4:8, 4:8] = torch.rand(1, 3, 4, 4, dtype=torch.float64)  # one copy differs from the input
    agree(model, x, patch=4)
    torch.manual_seed(0)
    agree(Gate().double().eval(), torch.rand(2, 3, 16, 16, dtype=torch.float64), patch=6, stride=2, batch_size=1)


@pytest.mark.parametrize("pool", [nn.AvgPool2d((8, 1)), nn.MaxPool2d((8, 1))])
def test_a_sum_that_broadcasts_two_sizes(pool):
    torch.manual_seed(0)
    agree(BroadcastSum(pool).double().eval(), torch.rand(2, 3, 8, 16, dtype=torch.float64), patch=(8, 2), stride=2)


@pytest.mark.parametrize("functional", [False, True])
def test_an_adaptive_pooling_that_keeps_a_dimension(functional):
    torch.manual_seed(0)
    agree(PartialPool(functional).double().eval(), torch.rand(2, 3, 16, 16, dtype=torch.float64), patch=4)


def test_batch_norm_without_running_statistics_is_not_pointwise():
    """Its statistics are the batch's: one image, all its copies in one batch on both paths."""
    torch.manual_seed(0)
    agree(BatchStatistics().double().eval(), torch.rand(1, 3, 12, 12, dtype=torch.float64), patch=3, stride=3,
          batch_size=1000)


def test_a_model_that_writes_into_its_input_sees_the_caller_s_values():
    torch.manual_seed(0)
    model = WritesItsInput().double().eval()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    got = maps(model, x, [0], patch=4, stride=4, fold_batchnorm=False)
    want = reference_drops(model, x, 0, 4)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def reference_drops(model: nn.Module, x: Tensor, target: int, patch: int) -> Tensor:
    """Every non-overlapping patch zeroed in a fresh copy of ``x``, one forward pass each."""
    with torch.no_grad():
        clean = float(model(x.clone())[0, target])
        heat = torch.zeros_like(x)
        for r in range(0, x.shape[2], patch):
            for c in range(0, x.shape[3], patch):
                copy = x.clone()
                copy[:, :, r : r + patch, c : c + patch] = 0
                heat[:, :, r : r + patch, c : c + patch] = clean - float(model(copy)[0, target])
    return heat


def test_grown_batches_keep_no_more_alive_than_a_batch_of_whole_copies(monkeypatch: pytest.MonkeyPatch):
    """The values a grown batch keeps alive at once, counted as the first batch's are (each dropped
    after its last use), times four for the operations' temporaries, stay within those of
    ``batch_size`` whole copies."""
    peaks: list[tuple[int, int, int]] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, image: Tensor, key: int, patches: Tensor, region: Region) -> object:
        self._counted, self._peak = False, 0  # count every batch
        out = original(self, image, key, patches, region)
        peaks.append((patches.shape[0], self.peak_per_copy(), self.whole_per_copy()))
        return out

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    maps(model, x, [0], patch=8, stride=4, batch_size=20)
    assert max(b for b, _, _ in peaks) > 20
    for batch, peak, whole in peaks:
        assert 4 * batch * peak <= 20 * whole * 1.05


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

    def spy(self: deltas_module.Deltas, image: Tensor, key: int, patches: Tensor, region: Region) -> object:
        with OpNames() as names:
            out = original(self, image, key, patches, region)
        calls.append(names.names)
        return out

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    return calls


def test_a_repeated_batch_layout_does_its_index_arithmetic_once(batch_ops: list[list[str]]):
    """Every image's batch holds the same patch positions: the regions' index arithmetic (aranges,
    clamps, the gathers' plans) is done for the first only; later batches dispatch the arithmetic
    on the values alone. An image whose layout differs (patches equal to the fill are skipped)
    gets its own. The maps stay those of the whole copies."""
    calls = batch_ops
    model = randomized(ResNetLike())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64) + 0.1
    x[3, :, :8, :8] = 0.0  # the first patch of the last image equals the fill: a layout of its own
    target = torch.tensor([0, 1, 2, 3])
    got = maps(model, x, target, patch=4, stride=4)
    assert len(calls) == 4
    index_arithmetic = {"arange", "clamp", "div", "stack", "index_select", "masked_fill_", "index_copy_"}
    first, later = calls[0], calls[1:3]
    assert {"arange", "clamp", "div"} <= set(first)
    for names in later:
        assert not {"arange", "div", "stack"} & set(names)  # (a clamp of values remains: ReLU's rule)
        assert len(names) < 0.6 * len(first)
    assert {"arange", "clamp"} <= set(calls[3])  # (a new layout)
    assert index_arithmetic & set(later[0])  # (the gathers themselves remain)
    torch.testing.assert_close(got, maps(model, x, target, patch=4, stride=4, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cut_and_to_full_in_either_layout(layout: torch.memory_format):
    gen = torch.Generator().manual_seed(12)
    t = torch.randn(1, 5, 9, 11, dtype=torch.float64, generator=gen).contiguous(memory_format=layout)
    region = Region(torch.tensor([[0, 0], [6, 8], [2, 3]]), (3, 3), (9, 11))
    out = cut(t, region)
    for b, (r, c) in enumerate(region.starts.tolist()):
        assert torch.equal(out[b], t[0, :, r : r + 3, c : c + 3])
    full = to_full(out, region, like=t)
    assert full.is_contiguous(memory_format=layout)
    for b, (r, c) in enumerate(region.starts.tolist()):
        want = torch.zeros_like(t[0])
        want[:, r : r + 3, c : c + 3] = t[0, :, r : r + 3, c : c + 3]
        assert torch.equal(full[b], want)


def test_gather_plans_keep_32_bit_indices_unless_the_source_is_larger():
    from salmap.explain.occlusion_regions import Gather

    rows, cols = torch.tensor([[0, 1]]), torch.tensor([[2, 3]])
    assert Gather.plan(rows, cols, 9, 9, per_copy=True).index.dtype == torch.int32
    big = Gather.plan(rows + 46_000, cols + 46_000, 46_341, 46_341, per_copy=False)  # 46,341^2 > 2^31 rows
    assert big.index.dtype == torch.long and int(big.index[-1]) == 46_001 * 46_341 + 46_003


def test_a_batch_of_region_held_copies_reads_nothing_from_the_device(monkeypatch: pytest.MonkeyPatch):
    """No host read inside a batch, its first included (on a GPU each would stall the device), and
    a call on one image keeps no batch layout (none could be repeated)."""
    from _dispatch import Recorder

    reads: list[int] = []
    kept: list[int] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, image: Tensor, key: int, patches: Tensor, region: Region) -> object:
        with Recorder() as recorder:
            out = original(self, image, key, patches, region)
        reads.append(recorder.reads)
        kept.append(len(self._layouts))
        return out

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    got = maps(model, x, [2], patch=4, stride=3, batch_size=30)
    assert len(reads) > 2 and set(reads) == {0} and set(kept) == {0}
    torch.testing.assert_close(got, maps(model, x, [2], patch=4, stride=3, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)
