"""Occlusion's clean pass (:mod:`salmap.explain.occlusion_clean`): the images of a call go through
the graph together, a group at a time, and each image reads its rows."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
from _region_models import ResNetLike, maps, randomized
from torch import Tensor, nn

import salmap.explain.occlusion_deltas as deltas_module
from salmap.explain import Occlusion
from salmap.folding import TraceCache


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
    """The first image, then two copies of it, go through the graph once (to see where its values
    hold the batch), then every call's images go through it together; the maps are those of whole
    copies."""
    model = randomized(ResNetLike())
    occlusion = Occlusion(model, patch=4, stride=4, batch_size=100)
    x = _images(5)
    first = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [1, 2, 5]
    again = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [1, 2, 5, 5]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    whole = maps(model, x, [0, 1, 2, 0, 1], patch=4, stride=4, batch_size=100, fold_batchnorm=False)
    torch.testing.assert_close(first, whole, rtol=1e-9, atol=1e-12)


def test_a_group_s_values_and_relu_terms_fit_in_a_quarter_of_batch_size_whole_copies(monkeypatch: pytest.MonkeyPatch,
                                                                                    passes: list[int]) -> None:
    """A small ``batch_size`` makes the groups small: a group's values (every node's, kept for the
    group's batches) and each ReLU's clean terms (in the input's dtype at fp32) at most a quarter of
    the values ``batch_size`` whole copies keep alive (counted in storage bytes)."""
    seen: list[tuple[int, float]] = []
    original = deltas_module.Deltas._run

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, start: Any) -> Any:
        out = original(self, images, i, start)
        group = self._passes._group
        assert group is not None
        storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for n, v in group.values.items()
                    if n in self.varying and n.op != "placeholder" and isinstance(v, Tensor)}
        held = sum(storages.values()) + sum(t.untyped_storage().nbytes() for t in group.derived.values())
        one = {n: v[:1] for n, v in group.values.items() if n in self.varying and isinstance(v, Tensor)}
        seen.append((group.stop - group.start, held / (0.25 * 128 * self._whole_peak(one) * images.element_size())))
        return out

    monkeypatch.setattr(deltas_module.Deltas, "_run", spy)
    model = randomized(ResNetLike())
    x = _images(16, seed=1, size=32)
    got = Occlusion(model, patch=4, stride=4, batch_size=128).attribute(x, target=[0] * 16)
    assert len(passes) >= 4 and max(passes[2:]) > 1 and sum(passes[2:]) == 16
    assert all(ratio <= 1 for n, ratio in seen if n > 1), seen
    torch.testing.assert_close(got, maps(model, x, [0] * 16, patch=4, stride=4, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


def _alive_at_each_pass(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(images, tensors of the previous clean pass still alive) at the start of every clean pass."""
    log: list[tuple[int, int]] = []
    refs: list[weakref.ref[Tensor]] = []
    original = deltas_module.Deltas._clean_pass

    def spy(self: deltas_module.Deltas, images: Tensor) -> Any:
        gc.collect()
        log.append((images.shape[0], sum(r() is not None for r in refs)))
        out = original(self, images)
        refs[:] = [weakref.ref(v) for n, v in out.items()
                   if n in self.varying and n.op != "placeholder" and isinstance(v, Tensor)]
        return out

    monkeypatch.setattr(deltas_module.Deltas, "_clean_pass", spy)
    return log


def test_a_group_s_values_are_freed_before_the_next_group_s_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Found in review: the last group stayed alive through the next one's pass, two groups at once.)"""
    log = _alive_at_each_pass(monkeypatch)
    x = _images(6)
    Occlusion(randomized(ResNetLike()), patch=4, stride=4, batch_size=20, precision="bf16").attribute(x, target=[0] * 6)
    assert len(log) > 2 and all(alive == 0 for _, alive in log), log


class Transposed(nn.Module):
    """A value whose batch stands in its second dimension (moved there and back): differences
    broadcast, but a group's rows cannot be read off it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)  # (two channels: the first dimension 2 at any batch)
        self.fc = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).transpose(0, 1)
        h = torch.relu(h).transpose(0, 1)
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


class Merged(Transposed):
    """The batch merged into one row and split again: one image's values do not broadcast over a
    batch of copies (found in review: the call failed with a size mismatch)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = torch.relu(h.view(1, -1)).view(h.shape)
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


class Positions(Transposed):
    """A value computed from the input's size that is the same for any batch (a position table cut
    to the activation's size): the group's own value serves every image (found in review: such
    graphs were refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 2, 30, 30))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = torch.relu(h + self.pos[:, :, : h.size(2), : h.size(3)])
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("model_class", "first_call", "warmed"), [
    (Transposed, [1, 2, 1, 1, 1, 1], [1, 1, 1, 1]),  # differences, one image at a time
    (Positions, [1, 2, 4], [4]),  # differences, the images together
    (Merged, [1, 2], []),  # whole copies (plain autocast in bf16)
])
def test_where_the_graph_holds_the_batch(passes: list[int], precision: str, model_class: type[nn.Module],
                                         first_call: list[int], warmed: list[int]) -> None:
    model = randomized(model_class())
    x = _images(4, seed=2)
    occlusion = Occlusion(model, patch=4, stride=2, batch_size=64, precision=precision)
    got = occlusion.attribute(x, target=[0, 1, 2, 0])
    assert passes == first_call
    again = occlusion.attribute(x, target=[0, 1, 2, 0])
    assert passes == first_call + warmed
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    whole = maps(model, x, [0, 1, 2, 0], patch=4, stride=2, fold_batchnorm=False)
    if precision == "fp32":
        torch.testing.assert_close(got, whole, rtol=1e-9, atol=1e-12)
    elif model_class is Merged:  # (the model's own arithmetic under autocast)
        torch.testing.assert_close(got, maps(model, x, [0, 1, 2, 0], patch=4, stride=2, fold_batchnorm=False,
                                             precision=precision), rtol=0, atol=0)
    else:
        assert torch.corrcoef(torch.stack([got.flatten(), whole.flatten()]))[0, 1] > 0.9999


def test_the_differences_refuse_a_graph_that_merges_the_batch() -> None:
    traced = TraceCache().trace(randomized(Merged()), True, always=True)
    assert traced is not None
    deltas = deltas_module.Deltas(traced.module, torch.bfloat16)
    x = _images(2)
    assert not deltas.fits(x)
    with pytest.raises(ValueError, match="merges the batch"):
        deltas(x, 0, x[:1])


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


def test_the_clean_values_are_dropped_when_the_call_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between calls the explainer keeps the batch layouts' plans, not the last group's clean values."""
    kept: list[weakref.ref[Tensor]] = []
    original = deltas_module.Deltas._clean_pass

    def spy(self: deltas_module.Deltas, images: Tensor) -> Any:
        out = original(self, images)
        kept.extend(weakref.ref(v) for n, v in out.items() if n.op != "placeholder" and isinstance(v, Tensor)
                    and n in self.varying)
        return out

    monkeypatch.setattr(deltas_module.Deltas, "_clean_pass", spy)
    occlusion = Occlusion(randomized(ResNetLike()), patch=4, stride=4, batch_size=100, precision="bf16")
    occlusion.attribute(_images(3), target=[0, 1, 2])
    gc.collect()
    assert kept and all(r() is None for r in kept)
    assert occlusion._deltas._kept is not None  # (the explainer's differences are kept, without values)
