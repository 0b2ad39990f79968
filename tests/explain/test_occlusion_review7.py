"""Occlusion regions, found in review 7: each failed before its fix."""

from __future__ import annotations

import gc

import torch
from test_occlusion_regions import ResNetLike, maps, randomized

from salmap.explain.occlusion_regions import Region


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
