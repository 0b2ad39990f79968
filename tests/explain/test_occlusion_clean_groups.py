"""Occlusion's clean pass (:mod:`salmap.explain.occlusion_clean`): the images of a call go through
the graph together, a group at a time, and each image reads its rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _region_models import ResNetLike, maps, randomized
from torch import Tensor, nn

import salmap.explain.occlusion_deltas as deltas_module
from salmap.explain import Occlusion


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every clean pass, in order."""
    sizes: list[int] = []
    original = deltas_module.Deltas._clean_pass

    def spy(self: deltas_module.Deltas, images: Tensor) -> Any:
        sizes.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(deltas_module.Deltas, "_clean_pass", spy)
    return sizes


def _images(n: int, seed: int = 0, size: int = 24) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_call_s_images_share_one_clean_pass(passes: list[int]) -> None:
    """The first image is computed alone once (its value shapes are what a group must have), then
    every call's images go through the graph together; the maps are those of whole copies."""
    model = randomized(ResNetLike())
    occlusion = Occlusion(model, patch=4, stride=4, batch_size=100)
    x = _images(5)
    first = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [1, 5]
    again = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [1, 5, 5]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    whole = maps(model, x, [0, 1, 2, 0, 1], patch=4, stride=4, batch_size=100, fold_batchnorm=False)
    torch.testing.assert_close(first, whole, rtol=1e-9, atol=1e-12)


def test_a_group_s_clean_values_fit_in_a_quarter_of_a_batch_of_whole_copies(passes: list[int]) -> None:
    """A small ``batch_size`` makes the groups small: a group's values (every node's, kept for the
    group's batches) at most a quarter of the values ``batch_size`` whole copies keep alive."""
    model = randomized(ResNetLike())
    occlusion = Occlusion(model, patch=4, stride=4, batch_size=30)
    x = _images(7, seed=1)
    got = occlusion.attribute(x, target=[1] * 7)
    groups = passes[1:]
    assert sum(groups) == 7 and len(groups) >= 2 and max(groups) >= 2
    traced = occlusion._traces.trace(model, True, always=True)
    assert traced is not None
    probe = deltas_module.Deltas(traced.module, torch.float64)
    values = probe._clean_pass(x[:1])
    kept = sum(v.numel() for n, v in values.items() if n in probe.varying and isinstance(v, Tensor))
    assert max(groups) * kept <= 0.25 * 30 * probe._whole_peak(values) < (max(groups) + 1) * kept
    torch.testing.assert_close(got, maps(model, x, [1] * 7, patch=4, stride=4, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


class Transposed(nn.Module):
    """A value that is not batch-first (the batch moved to the second dimension and back): a
    group's rows cannot be read off it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).transpose(0, 1)
        h = torch.relu(h).transpose(0, 1)
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_graph_whose_values_are_not_batch_first_goes_one_image_at_a_time(passes: list[int], precision: str) -> None:
    model = randomized(Transposed())
    x = _images(4, seed=2)
    occlusion = Occlusion(model, patch=4, stride=2, batch_size=64, precision=precision)
    got = occlusion.attribute(x, target=[0, 1, 2, 0])
    assert passes[0] == 1 and passes[1] > 1  # (the group tried, refused: its shapes are not the first image's)
    assert passes[2:] == [1, 1, 1, 1]
    occlusion.attribute(x, target=[0, 1, 2, 0])
    assert passes[6:] == [1, 1, 1, 1]  # (and not tried again)
    whole = maps(model, x, [0, 1, 2, 0], patch=4, stride=2, fold_batchnorm=False)
    if precision == "fp32":
        torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)
    else:
        assert torch.corrcoef(torch.stack([got.flatten(), whole.flatten()]))[0, 1] > 0.999


def test_the_relu_terms_are_computed_once_per_group(monkeypatch: pytest.MonkeyPatch, passes: list[int]) -> None:
    """``-c`` of a region-held ReLU's clean input is computed on the group's values (one operation
    per ReLU and group, not per image), and bf16 maps equal float32's closely."""
    model = randomized(ResNetLike())
    x = _images(6, seed=3)
    calls: list[tuple[int, ...]] = []
    original = torch.mul

    def mul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(a, Tensor) and b == -1 and "out" in kwargs:
            calls.append(tuple(a.shape))
        return original(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mul", mul)
    occlusion = Occlusion(model, patch=4, stride=4, batch_size=100, precision="bf16")
    occlusion.attribute(x, target=[2] * 6)
    calls.clear()
    got = occlusion.attribute(x, target=[2] * 6)
    assert passes[-1] == 6 and calls and all(shape[0] == 6 for shape in calls)
    monkeypatch.setattr(torch, "mul", original)
    full = Occlusion(model, patch=4, stride=4, batch_size=100).attribute(x, target=[2] * 6)
    assert torch.corrcoef(torch.stack([got.flatten(), full.flatten()]))[0, 1] > 0.9999
