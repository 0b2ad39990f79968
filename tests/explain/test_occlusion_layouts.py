"""Occlusion keeps its batch layouts' index plans for its next call on images of the same size with
the same patches (:mod:`salmap.explain.occlusion_layouts`): the next call launches no index
arithmetic, and its maps are a fresh explainer's."""

from __future__ import annotations

import copy
import pickle

import _region_models as shared
import pytest
import torch
from _region_models import ResNetLike, randomized
from torch import Tensor

from salmap.explain import Occlusion
from salmap.explain.occlusion_layouts import KeptForNextCall, KeptLayouts
from salmap.explain.occlusion_regions import Region

batch_ops = shared.batch_ops  # (a fixture)

INDEX_ARITHMETIC = {"arange", "div", "stack"}


def _images(seed: int, count: int = 3, size: int = 32) -> Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1


def test_the_next_call_on_other_images_of_that_size_reuses_the_plans_and_gives_a_fresh_explainer_s_maps(batch_ops):
    model = randomized(ResNetLike())
    occ = Occlusion(model, patch=4, stride=4, batch_size=32)
    occ.attribute(_images(1), target=[0, 1, 2])
    first = len(batch_ops)
    assert any(INDEX_ARITHMETIC <= set(names) for names in batch_ops[:first])
    x = _images(2)
    again = occ.attribute(x, target=[2, 0, 1])
    assert len(batch_ops) == 2 * first
    for names in batch_ops[first:]:  # every layout came from the first call: values only
        assert not INDEX_ARITHMETIC & set(names)
    fresh = Occlusion(model, patch=4, stride=4, batch_size=32).attribute(x, target=[2, 0, 1])
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)


def test_another_size_patch_or_batch_size_makes_new_plans(batch_ops):
    model = randomized(ResNetLike())
    occ = Occlusion(model, patch=4, stride=4, batch_size=32)
    occ.attribute(_images(1), target=[0, 1, 2])
    for change in ({"size": 36}, {"patch": 3}, {"batch_size": 16}):
        done = len(batch_ops)
        size = int(change.get("size", 32))
        occ.patch = occ.stride = (int(change.get("patch", 4)),)
        occ.batch_size = int(change.get("batch_size", 32))
        x = _images(3, size=size)
        got = occ.attribute(x, target=[0, 1, 2])
        assert INDEX_ARITHMETIC <= set(batch_ops[done])  # (new plans for the new geometry)
        want = Occlusion(model, patch=occ.patch, stride=occ.stride, batch_size=occ.batch_size,
                         fold_batchnorm=False).attribute(x, target=[0, 1, 2])
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weights_changed_between_calls_count(precision: str):
    """The weights in the low dtype are made again at every call (the folded ones are new objects,
    whose ids may be those of freed ones)."""
    model = randomized(ResNetLike()).float()
    x = _images(4).float()
    occ = Occlusion(model, patch=4, stride=4, batch_size=32, precision=precision)
    occ.attribute(x, target=[0, 1, 2])
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(-0.5)
    got = occ.attribute(x, target=[0, 1, 2])
    fresh = Occlusion(model, patch=4, stride=4, batch_size=32, precision=precision).attribute(x, target=[0, 1, 2])
    torch.testing.assert_close(got, fresh, rtol=0, atol=0)


def test_a_copied_or_pickled_explainer_starts_without_them():
    occ = Occlusion(randomized(ResNetLike()), patch=4, stride=4)
    occ.attribute(_images(5, count=1), target=[0])
    assert occ._deltas._kept is not None
    for other in (copy.deepcopy(occ), pickle.loads(pickle.dumps(occ))):
        assert other._deltas._kept is None


def _region(n: int) -> Region:
    return Region(torch.arange(2 * n).view(n, 2), (2, 2), (8, 8))


def test_kept_layouts_carry_the_rest_to_the_next_call_within_the_budget():
    layouts, made = KeptLayouts(), []

    def make(n: int):
        def build() -> Region:
            made.append(n)
            return _region(n)
        return build

    def budget() -> float:
        return 4 * _region(1).nbytes()  # four one-copy layouts

    layouts.get("a", make(1), 0, budget)  # the last image's: carried to the next call at once
    assert len(layouts) == 0 and len(layouts.values()) == 1
    layouts.get("b", make(1), 1, budget)  # kept for the next image
    layouts.get("c", make(1), 1, budget)
    layouts.get("d", make(1), 1, budget)  # "b" not used for a request (keep 1): carried
    assert len(layouts) == 2
    layouts.get("a", make(1), 1, budget)  # an earlier call's: no new region
    assert made == [1, 1, 1, 1] and len(layouts) == 2  # ("c" carried)
    layouts.get("e", make(2), 1, budget)  # a two-copy layout ("d" carried)
    layouts.get("f", make(1), 1, budget)  # "e" counted: six copies' plans, the two oldest carried go
    kept = {id(r) for r in layouts.values()}
    assert len(kept) == 4 and made == [1, 1, 1, 1, 2, 1]
    layouts.get("b", make(1), 1, budget)  # dropped: made again
    assert made[-1] == 1 and len(made) == 7


def test_kept_for_next_call_keeps_one_object_per_key():
    kept: KeptForNextCall[list[int]] = KeptForNextCall()
    renewed: list[list[int]] = []
    a = kept.get(("k", 1), lambda: [1], renewed.append)
    assert kept.get(("k", 1), lambda: [2], renewed.append) is a and renewed == [a]
    b = kept.get(("k", 2), lambda: [3], renewed.append)
    assert b == [3] and kept.get(("k", 2), lambda: [4], renewed.append) is b
