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
    """Two copies of the first image go through the graph once (its values must be batch-first),
    then every call's images go through it together; the maps are those of whole copies."""
    model = randomized(ResNetLike())
    occlusion = Occlusion(model, patch=4, stride=4, batch_size=100)
    x = _images(5)
    first = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [2, 5]
    again = occlusion.attribute(x, target=[0, 1, 2, 0, 1])
    assert passes == [2, 5, 5]
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
    assert len(passes) >= 3 and max(passes) > 1 and sum(passes[1:]) == 16
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
    """A value that is not batch-first (the batch moved to the second dimension and back)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).transpose(0, 1)
        h = torch.relu(h).transpose(0, 1)
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


class Merged(Transposed):
    """The batch merged into one row and split again (found in review: the differences from one
    image's values did not broadcast, and the call failed)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = torch.relu(h.view(1, -1)).view(h.shape)
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1))


@pytest.mark.parametrize("model_class", [Transposed, Merged])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_graph_whose_values_are_not_batch_first_runs_on_whole_copies(passes: list[int], precision: str,
                                                                         model_class: type[nn.Module]) -> None:
    model = randomized(model_class())
    for n in (4, 1):
        x = _images(n, seed=2)
        target = [0, 1, 2, 0][:n]
        occlusion = Occlusion(model, patch=4, stride=2, batch_size=64, precision=precision)
        got = occlusion.attribute(x, target=target)
        occlusion.attribute(x, target=target)
        whole = maps(model, x, target, patch=4, stride=2, fold_batchnorm=False, precision=precision)
        torch.testing.assert_close(got, whole, rtol=0, atol=0)  # (the model's own arithmetic, autocast in bf16)
    # the check, once per explainer (in bf16 the whole copies' explainer traces the model too); no clean pass
    assert passes == [2] * (4 if precision == "bf16" else 2)


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
