"""Occlusion regions, found in review 7: each failed before its fix."""

from __future__ import annotations

import gc
from typing import Any

import torch
from _region_models import grow_as_on_cuda
from test_occlusion_regions import ResNetLike, maps, randomized
from torch import Tensor

import salmap.explain.occlusion_deltas as deltas_module
from salmap.explain.occlusion_regions import Gather, Region


def test_a_batch_s_regions_are_freed_when_it_ends_without_the_cycle_collector() -> None:
    """The regions of a batch (and the index plans they keep) die with it: a residual sum kept the
    inner region on the outer one (and its recrop the outer on the inner), a reference cycle,
    so every batch's plans stayed alive until the garbage collector ran (on a GPU, device memory
    growing between its runs)."""
    model = randomized(ResNetLike())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    gc.collect()
    gc.disable()
    try:
        maps(model, x, [0], patch=4, stride=4, batch_size=100)
        alive = sum(type(o) is Region for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0


def plan_bytes(obj: Any, seen: set[int]) -> int:
    """The bytes of the tensors a kept region holds (its starts, the plans and regions in its memo)."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, Region):
        return plan_bytes(obj.starts, seen) + sum(plan_bytes(v, seen) for v in obj._memo.values())
    if isinstance(obj, Gather):
        return plan_bytes(obj.index, seen) + plan_bytes(obj.outside, seen)
    if isinstance(obj, (tuple, list)):
        return sum(plan_bytes(v, seen) for v in obj)
    return 0


def test_the_kept_batch_layouts_stay_within_the_memory_of_a_batch(monkeypatch: Any) -> None:
    """Many patch positions per image (stride 1) and a small batch: the plans kept for the next
    image must not outgrow what ``batch_size`` bounds (a batch of whole copies' activations);
    they grew with the number of positions (10 MB here against a batch's 1 MB)."""
    held: list[tuple[int, int]] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        out = original(self, images, i, patches, region)
        seen: set[int] = set()
        kept = sum(plan_bytes(r, seen) for r in self._layouts.values())
        held.append((kept, 10 * self.whole_per_copy() * images.element_size()))
        return out

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    got = maps(model, x, [0, 1], patch=4, stride=1, batch_size=10)
    assert len(held) > 20
    assert max(k for k, _ in held) > 0  # (layouts are kept: the next image reuses them)
    assert all(kept <= batch for kept, batch in held), max(held)
    torch.testing.assert_close(got, maps(model, x, [0, 1], patch=4, stride=1, batch_size=10, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


def test_the_first_image_s_grown_batches_are_not_kept(monkeypatch: Any) -> None:
    """After the first batch the batches grow: the first image's further batches start after its
    first one, so no later image repeats their layouts; they were kept all the same (two images:
    every layout of the first kept, none ever reused)."""
    kept: list[tuple[int, int]] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        kept.append((i, len(self._layouts)))
        return original(self, images, i, patches, region)

    grow_as_on_cuda(monkeypatch)
    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    got = maps(model, x, [0, 1, 2], patch=4, stride=2, batch_size=100)  # 529 copies per image
    assert len(kept) > 6
    assert max(n for key, n in kept if key == 0) <= 1  # (the first image's: its first batch's alone)
    assert max(n for key, n in kept if key == 2) > 0  # (the second image's: kept for the third)
    torch.testing.assert_close(got, maps(model, x, [0, 1, 2], patch=4, stride=2, batch_size=100,
                                         fold_batchnorm=False), rtol=1e-9, atol=1e-12)
