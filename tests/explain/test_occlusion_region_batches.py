"""Batches of region-held copies: they grow within the memory of whole copies, a repeated batch
layout does its index arithmetic once, and a batch reads nothing from the device."""

from __future__ import annotations

import _region_models as shared
import pytest
import torch
from _region_models import ResNetLike, grow_as_on_cuda, maps, randomized
from torch import Tensor

import salmap.explain.occlusion_deltas as deltas_module
from salmap.explain.occlusion_regions import Region

batch_ops = shared.batch_ops  # (a fixture)


def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The copies of every batch of region-held copies run from now on."""
    sizes: list[int] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: object, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        sizes.append(patches.shape[0])
        return original(self, images, i, patches, region)  # type: ignore[arg-type]

    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    return sizes


def test_batches_of_region_held_copies_grow_within_the_memory_of_whole_ones(monkeypatch: pytest.MonkeyPatch):
    """After the first batch, as many more copies as the regions leave room for (at most 16 times)."""
    grow_as_on_cuda(monkeypatch)
    sizes = batch_sizes(monkeypatch)
    model = randomized(ResNetLike())
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    target = torch.tensor([1, 2])
    got = maps(model, x, target, patch=4, stride=2, batch_size=100)  # 23 x 23 = 529 copies per image
    assert sizes[0] <= 100 and max(sizes[1:]) > 100 and max(sizes) <= 1600 and sum(sizes) == 2 * 529
    torch.testing.assert_close(got, maps(model, x, target, patch=4, stride=2, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


def test_the_next_call_s_batches_hold_the_grown_number_of_copies_from_the_first(monkeypatch: pytest.MonkeyPatch):
    """The first call learns how many more region-held copies a batch may hold (after its first
    batch); the explainer's next call on images of that size batches that many from its first
    batch on (no small first batch, no padded remainder of the first image), with the same maps."""
    from salmap.explain import Occlusion

    grow_as_on_cuda(monkeypatch)
    sizes = batch_sizes(monkeypatch)
    model = randomized(ResNetLike())
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    target = torch.tensor([1, 2, 0])
    occlusion = Occlusion(model, patch=4, stride=2, batch_size=100)  # 23 x 23 = 529 copies per image
    first = occlusion.attribute(x, target=target)
    first_sizes, sizes[:] = list(sizes), []
    again = occlusion.attribute(x, target=target)
    grown = first_sizes[-3:]  # (the last image's batches: 529 copies in batches of 200 or fewer)
    assert first_sizes[0] <= 100 < min(grown) and first_sizes[1] < grown[0] and len(first_sizes) == 10
    assert sizes == grown * 3  # (the first image's too)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(again, maps(model, x, target, patch=4, stride=2, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)


def test_on_the_cpu_batches_of_region_held_copies_stay_at_batch_size(monkeypatch: pytest.MonkeyPatch):
    """On the CPU a grown batch runs slower per copy (its working set leaves the caches): every
    batch, in the first call and the next, holds ``batch_size`` copies or fewer."""
    from salmap.explain import Occlusion

    sizes = batch_sizes(monkeypatch)
    model = randomized(ResNetLike())
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    occlusion = Occlusion(model, patch=4, stride=2, batch_size=100)  # 23 x 23 = 529 copies per image
    first = occlusion.attribute(x, target=[1, 2])
    assert sizes == [89, 89, 89, 89, 89, 84] * 2  # (529 in 6 batches)
    assert torch.equal(occlusion.attribute(x, target=[1, 2]), first) and sizes[12:] == sizes[:12]


def test_grown_batches_keep_no_more_alive_than_a_batch_of_whole_copies(monkeypatch: pytest.MonkeyPatch):
    """The values a grown batch keeps alive at once, counted as the first batch's are (each dropped
    after its last use), times four for the operations' temporaries, stay within those of
    ``batch_size`` whole copies."""
    peaks: list[tuple[int, int, int]] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        self._counted, self._peak = False, 0  # count every batch
        out = original(self, images, i, patches, region)
        peaks.append((patches.shape[0], self.peak_per_copy(), self.whole_per_copy()))
        return out

    grow_as_on_cuda(monkeypatch)
    monkeypatch.setattr(deltas_module.Deltas, "on_patches", spy)
    model = randomized(ResNetLike())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    maps(model, x, [0], patch=8, stride=4, batch_size=20)
    assert max(b for b, _, _ in peaks) > 20
    for batch, peak, whole in peaks:
        assert 4 * batch * peak <= 20 * whole * 1.05


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


def test_a_batch_of_region_held_copies_reads_nothing_from_the_device(monkeypatch: pytest.MonkeyPatch):
    """No host read inside a batch, its first included (on a GPU each would stall the device), and
    a call on one image keeps no batch layout (none could be repeated)."""
    from _dispatch import Recorder

    reads: list[int] = []
    kept: list[int] = []
    original = deltas_module.Deltas.on_patches

    def spy(self: deltas_module.Deltas, images: Tensor, i: int, patches: Tensor, region: Region) -> object:
        with Recorder() as recorder:
            out = original(self, images, i, patches, region)
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


def test_a_relu_s_output_is_cut_out_for_the_next_windows_in_one_pass(batch_ops: list[list[str]]):
    """The ReLUs' differences held on regions (two per batch here: the stem's and the first
    block's first) are written with a zero row after them, and the convolution that reads the
    first block's ReLU reads that row where its windows leave the region: no masked_fill_ pass.
    Three remain per batch: the stem's window of the input's difference, the max pooling's
    (``-inf`` padding) and the first block's first convolution, which reads the pooling's output."""
    model = randomized(ResNetLike())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64) + 0.1
    target = torch.tensor([0, 1])
    got = maps(model, x, target, patch=4, stride=4)
    assert len(batch_ops) == 2
    for names in batch_ops:
        assert names.count("masked_fill_") == 3 and names.count("zero_") == 2
    torch.testing.assert_close(got, maps(model, x, target, patch=4, stride=4, fold_batchnorm=False),
                               rtol=1e-9, atol=1e-12)
