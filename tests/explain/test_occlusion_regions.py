"""Occlusion on the regions a patch can reach (salmap.explain.occlusion_regions): the same maps as
the model run on every whole occluded copy, on models with every operation the regions know
(strided and grouped convolutions, poolings with padding, residual sums, a spatial output) and
with ones they do not."""

from __future__ import annotations

import _region_models as shared
import pytest
import torch
import torch.nn.functional as F
from _region_models import CASES, Crossed, ResNetLike, Segmenter, maps, randomized
from torch import Tensor, nn

import salmap.explain.occlusion_deltas as deltas_module

spied = shared.spied  # (a fixture)


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
