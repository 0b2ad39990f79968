"""The regions' arithmetic (salmap.explain.occlusion_regions) against brute force: cut-outs,
writing out at full size, sliding windows, recrops, gather plans (with and without a zero row)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from salmap.explain.occlusion_regions import (
    Region,
    crop,
    cut,
    recrop,
    to_full,
    window_input,
    window_of,
    with_zero_row,
)


def test_crop_and_to_full_against_indexing():
    gen = torch.Generator().manual_seed(14)
    t = torch.randn(1, 3, 7, 9, dtype=torch.float64, generator=gen)
    starts = torch.tensor([[0, 0], [-2, 5], [4, -1], [6, 8]])
    out = crop(t, starts, (3, 4), fill=-1.0)
    for b, (r, c) in enumerate(starts.tolist()):
        for i, j in itertools.product(range(3), range(4)):
            inside = 0 <= r + i < 7 and 0 <= c + j < 9
            want = t[0, :, r + i, c + j] if inside else torch.full((3,), -1.0, dtype=torch.float64)
            assert torch.equal(out[b, :, i, j], want)
    region = Region(torch.tensor([[0, 0], [4, 5]]), (3, 4), (7, 9))
    d = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen)
    full = to_full(d, region)
    assert full.shape == (2, 3, 7, 9) and torch.count_nonzero(full) == d.numel()
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
            held, rows = with_zero_row(tuple(d.shape), d.dtype, d.device)  # type: ignore[arg-type]
            held.copy_(d)
            assert torch.equal(window_input(held, region, reads, size, rows), cut_out)  # (the zero row read)
            got = F.conv2d(cut_out, weight, None, stride)
            assert got.shape[-2:] == out_region.size
            torch.testing.assert_close(to_full(got, out_region), want, rtol=1e-12, atol=1e-12)


def test_recrop_puts_a_region_inside_a_larger_one():
    gen = torch.Generator().manual_seed(7)
    small = Region(torch.tensor([[3, 4], [0, 0], [10, 9]]), (3, 2), (13, 11))
    big = Region(torch.tensor([[1, 2], [0, 0], [8, 6]]), (5, 5), (13, 11))
    d = torch.randn(3, 2, 3, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(to_full(recrop(d, small, big), big), to_full(d, small), rtol=0, atol=0)
    held, rows = with_zero_row(tuple(d.shape), d.dtype, d.device)  # type: ignore[arg-type]
    held.copy_(d)
    assert torch.equal(recrop(held, small, big, rows), recrop(d, small, big))
    assert torch.equal(recrop(held, small, small, rows), d)  # (the same region: nothing falls outside)


def test_a_tensor_with_a_zero_row_is_channels_last_over_its_rows():
    out, rows = with_zero_row((2, 3, 4, 5), torch.float32, torch.device("cpu"))
    assert out.shape == (2, 3, 4, 5) and out.is_contiguous(memory_format=torch.channels_last)
    assert rows.shape == (2 * 4 * 5 + 1, 3) and torch.equal(rows[-1], torch.zeros(3))
    out.copy_(torch.arange(120.0).view(2, 3, 4, 5))
    assert out.data_ptr() == rows.data_ptr() and torch.equal(rows[-1], torch.zeros(3))
    assert torch.equal(rows[:-1], out.permute(0, 2, 3, 1).reshape(-1, 3))


def test_a_zero_row_plan_points_outside_reads_past_the_source_s_rows():
    from salmap.explain.occlusion_regions import Gather

    rows, cols = torch.tensor([[-1, 0], [1, 2]]), torch.tensor([[0, 1], [1, 3]])  # (two copies of 3x3)
    plan = Gather.plan(rows, cols, 3, 3, per_copy=True, zero_row=True)
    assert plan.outside is None and plan.index.dtype == torch.int32
    assert plan.index.tolist() == [18, 18, 0, 1, 9 + 4, 18, 9 + 7, 18]  # (2 copies x 9 = 18 rows: 18 is the zero row)
    big = Gather.plan(rows, cols, 2**15, 2**16 - 1, per_copy=False, zero_row=True)  # 2^31 - 2^15 rows + 1
    assert big.index.dtype == torch.int32
    bigger = Gather.plan(rows, cols, 2**15, 2**16, per_copy=False, zero_row=True)  # 2^31 rows + 1
    assert bigger.index.dtype == torch.long and int(bigger.index[0]) == 2**31


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
