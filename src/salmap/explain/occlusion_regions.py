"""The part of an activation an occluding patch can change, and the operations on it.

An occluded copy differs from its clean image in one patch, so its activations differ from
the clean ones only inside the patch's cone: a convolution or a pooling of kernel ``k`` and
stride ``s`` widens it by ``k - 1`` and divides it by ``s``; a pointwise operation keeps it.
:class:`salmap.explain.occlusion_deltas.Deltas` keeps each difference ``d = a(x') - a(x)``
of a 2-D activation on a :class:`Region` (per copy: where the region starts, one size for the
batch) while that region is a small part of the activation, and is zero outside it by
construction: a convolution of ``d`` needs ``d`` on the region widened by its kernel (zero
beyond it, and zero padding beyond the border, as for the clean image), and the clean values
on the region are cut out of the clean activation. Before a patch reaches the classifier's
head the region covers the whole activation and the differences go on at full size.

Regions are placed inside their activation (shifted back from a border), so that a cut-out of
a clean activation never leaves it; the inputs of a convolution or pooling may, and read the
padding value there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: a region covering more than this fraction of its activation is given up for the full size
FULL_FRACTION = 0.6


@dataclass(frozen=True)
class Region:
    """``starts`` ``(B, 2)`` (first row and column, per copy) and ``size`` ``(h, w)`` of a region
    of an activation of spatial size ``full`` ``(H, W)``."""

    starts: Tensor
    size: tuple[int, int]
    full: tuple[int, int]
    _grid: list[tuple[Tensor, Tensor]] = field(default_factory=list, compare=False, repr=False)

    def worth_keeping(self) -> bool:
        h, w = self.size
        return h * w <= FULL_FRACTION * self.full[0] * self.full[1]

    def grid(self) -> tuple[Tensor, Tensor]:
        """The rows ``(B, h, 1)`` and columns ``(B, 1, w)`` of the region, per copy (computed once)."""
        if not self._grid:
            device = self.starts.device
            rows = self.starts[:, 0, None] + torch.arange(self.size[0], device=device)
            cols = self.starts[:, 1, None] + torch.arange(self.size[1], device=device)
            self._grid.append((rows[:, :, None], cols[:, None, :]))
        return self._grid[0]


def cut(t: Tensor, region: Region) -> Tensor:
    """The ``region`` of the one-image activation ``t`` ``(1, C, H, W)``, per copy: ``(B, C, h, w)``."""
    rows, cols = region.grid()
    return t[0].permute(1, 2, 0)[rows, cols].permute(0, 3, 1, 2)


def crop(t: Tensor, starts: Tensor, size: tuple[int, int], fill: float | None = None) -> Tensor:
    """``out[b, :, i, j] = t[b or 0, :, starts[b, 0] + i, starts[b, 1] + j]``, ``(B, C, h, w)`` in the
    channels-last layout; where that falls outside ``t`` it is ``fill`` (``None``: the caller
    knows it never does). ``t`` holds one image (shared) or one per row of ``starts``."""
    height, width = t.shape[-2:]
    rows = starts[:, 0, None] + torch.arange(size[0], device=t.device)
    cols = starts[:, 1, None] + torch.arange(size[1], device=t.device)
    r, c = rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
    last = t.permute(0, 2, 3, 1)
    out = (last[0][r, c] if t.shape[0] == 1 else last[torch.arange(t.shape[0], device=t.device)[:, None, None], r, c])
    out = out.permute(0, 3, 1, 2)
    if fill is None:
        return out
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    return out.masked_fill(~inside[:, None], fill)


def to_full(d: Tensor, region: Region, like: Tensor | None = None) -> Tensor:
    """The difference ``d`` held on ``region``, written into a zero activation of full size (in the
    layout of ``like``, the clean activation, so that the model's ``.view`` calls work on it;
    channels-last without it)."""
    b, c = d.shape[:2]
    layout = torch.contiguous_format if like is not None and like.is_contiguous() else torch.channels_last
    out = torch.empty((b, c, *region.full), dtype=d.dtype, device=d.device, memory_format=layout).zero_()
    rows, cols = region.grid()
    out.permute(0, 2, 3, 1)[torch.arange(b, device=d.device)[:, None, None], rows, cols] = d.permute(0, 2, 3, 1)
    return out


def shift(d: Tensor, offsets: Tensor, size: tuple[int, int], margins: tuple[int, int, int, int]) -> Tensor:
    """``out[b, :, i, j] = d[b, :, offsets[b, 0] + i, offsets[b, 1] + j]``, zero outside ``d``: what
    :func:`crop` with ``fill=0`` gives, in fewer operations, for offsets known to stay within
    ``margins`` (rows before, rows after, columns before, columns after ``d``): ``d`` is copied
    into a zero frame that wide (channels last) and cut out by one gather, no mask."""
    b, c, h, w = d.shape
    top, bottom, left, right = margins
    frame = d.new_zeros((b, h + top + bottom, w + left + right, c))
    frame[:, top : top + h, left : left + w] = d.permute(0, 2, 3, 1)
    rows = (offsets[:, 0, None] + torch.arange(top, top + size[0], device=d.device)).clamp(0, h + top + bottom - 1)
    cols = (offsets[:, 1, None] + torch.arange(left, left + size[1], device=d.device)).clamp(0, w + left + right - 1)
    out = frame[torch.arange(b, device=d.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def recrop(d: Tensor, region: Region, target: Region) -> Tensor:
    """``d`` (held on ``region``) on ``target`` of the same activation (which holds ``region``),
    zero where ``region`` ends."""
    grow = (max(0, target.size[0] - region.size[0]), max(0, target.size[1] - region.size[1]))
    return shift(d, target.starts - region.starts, target.size, (grow[0], grow[0], grow[1], grow[1]))


def window_input(d: Tensor, region: Region, reads: Tensor, size: tuple[int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """The input a sliding window reads (:func:`window_of`'s ``reads`` and ``size``) from ``d`` held
    on ``region``: zero beyond the region and beyond the activation's border (zero padding)."""
    margins = []
    for a in range(2):
        k, s, p, h = kernel[a], stride[a], padding[a], region.size[a]
        # reads - starts lies in [min(-(k - 1), p - 2k + 3 - s), max(s - k, -p)] (window_of's clamps)
        low, high = min(-(k - 1), p - 2 * k + 3 - s), max(s - k, -p)
        margins += [max(0, -low), max(0, high + size[a] - h)]
    return shift(d, reads - region.starts, size, (margins[0], margins[1], margins[2], margins[3]))


def window_of(region: Region, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
              out_full: tuple[int, int]) -> tuple[Region, Tensor, tuple[int, int]]:
    """The outputs of a sliding window (convolution, pooling: ``kernel``, ``stride``, ``padding``, no
    dilation) that read ``region``: their region, and the input rows and columns they read (start
    per copy, size)."""
    size, first, reads = [], [], []
    for a in range(2):
        h, k, s, p, n_out = region.size[a], kernel[a], stride[a], padding[a], out_full[a]
        count = min((h + k - 2) // s + 1, n_out)  # outputs reading any of h inputs, at any alignment
        o0 = torch.div(region.starts[:, a] + p - k + s, s, rounding_mode="floor")  # ceil((t + p - k + 1) / s)
        o0 = o0.clamp(0, n_out - count)
        size.append(count)
        first.append(o0)
        reads.append((count - 1) * s + k)
    starts = torch.stack(first, 1)
    # (Python numbers, not tensors made from them: a tensor from a list is a copy to the device)
    reading = torch.stack([first[0] * stride[0] - padding[0], first[1] * stride[1] - padding[1]], 1)
    return Region(starts, (size[0], size[1]), out_full), reading, (reads[0], reads[1])
