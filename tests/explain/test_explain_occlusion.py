"""Occlusion against a slow reference written straight from Zeiler & Fergus, one image at a time."""

from __future__ import annotations

import pytest
import torch
from _occlusion_reference import reference
from torch import nn

from salmap.explain import Occlusion


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 2, classes: int = 4, size: tuple[int, int] = (10, 11)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 3, 3, padding=1)
        self.fc = nn.Linear(3 * size[0] * size[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class TinySeg(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    x = torch.rand(3, 2, 10, 11, dtype=torch.float64)
    x[0, :, :4, :5] = 0.0  # a black region: zero-filled patches there change nothing
    classes = torch.tensor([0, 3, 1])
    return model, x, classes


@pytest.mark.parametrize(
    "patch, stride",
    [((3, 3), (2, 2)), ((2, 4), (3, 1)), ((4, 4), (4, 4)), ((3, 2), (3, 5)), ((10, 11), (1, 1)), ((1, 1), (1, 1))],
)
def test_matches_reference_zero_fill(setup, patch, stride):
    model, x, classes = setup
    got = Occlusion(model, patch=patch, stride=stride, fill="zero", batch_size=7).attribute(x, target=classes)
    want = reference(model, x, classes, patch, stride, 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fill", ["mean", "grey", "random", 0.25])
def test_matches_reference_fills(setup, fill):
    model, x, classes = setup
    occ = Occlusion(model, patch=3, stride=2, fill=fill, bounds=(0.0, 2.0), batch_size=16, seed=5)
    got = occ.attribute(x, target=classes)
    if fill == "mean":
        value = lambda t: t.mean(dim=(2, 3), keepdim=True).expand_as(t)  # noqa: E731
    elif fill == "grey":
        value = 1.0
    elif fill == "random":
        gen = torch.Generator().manual_seed(5)
        noise = 2.0 * torch.rand((1, *x.shape[1:]), generator=gen, dtype=torch.float64)
        value = lambda t: noise.expand_as(t)  # noqa: E731
    else:
        value = 0.25
    want = reference(model, x, classes, (3, 3), (2, 2), value)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_probabilities_and_default_target(setup):
    model, x, _ = setup
    pred = model(x).argmax(dim=1)
    got = Occlusion(model, patch=3, stride=2, probabilities=True).attribute(x)
    want = reference(model, x, pred, (3, 3), (2, 2), 0.0, probabilities=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_segmenter_class_and_mask():
    torch.manual_seed(1)
    model = TinySeg().double().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:7] = True
    mask[1, 6:, :] = True
    classes = torch.tensor([2, 1])
    got = Occlusion(model, patch=3, stride=2, fill="grey").attribute(x, target=classes, mask=mask)
    want = reference(model, x, classes, (3, 3), (2, 2), 0.5, mask=mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_batched_equals_one_by_one_and_batch_size_irrelevant(setup):
    model, x, classes = setup
    full = Occlusion(model, patch=3, stride=2, fill="random", batch_size=5).attribute(x, target=classes)
    for i in range(x.shape[0]):
        one = Occlusion(model, patch=3, stride=2, fill="random", batch_size=1000).attribute(x[i : i + 1], target=classes[i : i + 1])
        torch.testing.assert_close(one[0], full[i], rtol=0, atol=1e-12)


def test_skips_copies_equal_to_the_input():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.flatten(1)[:, :3] * 2.0

    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 0] = 1.0
    # fold_batchnorm=False: the model runs as it is on every copy (else it is traced, and run on regions)
    heat = Occlusion(Counting(), patch=2, stride=2, fill="zero", fold_batchnorm=False).attribute(x, target=0)
    # only the patch holding the one non-zero pixel differs from its zero-filled copy
    assert sum(calls) == 1 + 1
    assert heat[0, 0, 0, 0] == 2.0 and heat[0, 0, :2, :2].eq(2.0).all() and heat[0, 0, 2:].eq(0).all()


def test_input_and_model_left_as_they_were(setup):
    model, x, classes = setup
    model.train()
    before = x.clone()
    Occlusion(model, patch=3, stride=2, fill="mean").attribute(x, target=classes)
    assert torch.equal(x, before)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_captum_agrees_when_positions_agree(setup):
    captum = pytest.importorskip("captum.attr")
    model, x, classes = setup
    x = x[:, :, :9, :9]
    model = TinyCNN(size=(9, 9)).double().eval()
    got = Occlusion(model, patch=3, stride=2, fill="grey", bounds=(0, 1)).attribute(x, target=classes)
    want = captum.Occlusion(model).attribute(x, sliding_window_shapes=(2, 3, 3), strides=(1, 2, 2),
                                             baselines=0.5, target=classes)
    # captum returns float32 (it divides by the window counts after .float())
    torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch": 0}, "patch must be a positive int"),
        ({"stride": 0}, "stride must be a positive int"),
        ({"stride": -2}, "stride must be a positive int"),
        ({"stride": (2, 0)}, "stride must be a positive int"),
        ({"patch": 2.5}, "patch must be a positive int"),
        ({"fill": "black"}, "fill must be one of"),
        ({"batch_size": 0}, "batch_size must be in"),
    ],
)
def test_bad_settings(setup, kwargs, message):
    model = setup[0]
    with pytest.raises(ValueError, match=message):
        Occlusion(model, **kwargs)


def test_bad_input(setup):
    model, x, classes = setup
    with pytest.raises(ValueError, match=r"patch \(11, 11\) is larger than the input's spatial size \(10, 11\)"):
        Occlusion(model, patch=11).attribute(x, target=classes)
    with pytest.raises(ValueError, match="one size per spatial dimension"):
        Occlusion(model, patch=(2, 2, 2)).attribute(x, target=classes)
    with pytest.raises(ValueError, match="target must have shape"):
        Occlusion(model, patch=2).attribute(x, target=[0, 1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_maps_correlate_with_float32(digits_model, precision):
    model, x, y = digits_model
    x, y = x[:8], y[:8]
    full = Occlusion(model, patch=2, stride=1).attribute(x, target=y)
    half = Occlusion(model, patch=2, stride=1, precision=precision).attribute(x, target=y)
    assert half.dtype == full.dtype and half.shape == full.shape
    for a, b in zip(half, full, strict=True):
        a, b = a.flatten().double() - a.mean(), b.flatten().double() - b.mean()
        assert float((a * b).sum() / (a.norm() * b.norm())) >= 0.999
    assert not torch.equal(half, full)  # the forward passes did run in 16 bits


def test_precision_is_checked():
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"):
        Occlusion(TinyCNN(), precision="fp8")
