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

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: a region covering more than this fraction of its activation is given up for the full size
FULL_FRACTION = 0.6

_SERIALS = itertools.count()  # (names a region in another's memo without keeping it alive)


@dataclass(frozen=True, eq=False)
class Region:
    """``starts`` ``(B, 2)`` (first row and column, per copy) and ``size`` ``(h, w)`` of a region
    of an activation of spatial size ``full`` ``(H, W)``.

    Everything computed from ``starts`` alone (the index tensors of the cut-outs, the regions of
    the next layers) is kept on the region (:meth:`memo`): a batch layout that repeats (the same
    patch positions for every image) reuses it, and its batches launch only the arithmetic on
    the values."""

    starts: Tensor
    size: tuple[int, int]
    full: tuple[int, int]
    _memo: dict[Any, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _serial: int = field(default_factory=lambda: next(_SERIALS), repr=False)

    def worth_keeping(self) -> bool:
        h, w = self.size
        return h * w <= FULL_FRACTION * self.full[0] * self.full[1]

    def memo(self, key: Any, make: Callable[[], Any], anchor: object = None) -> Any:
        """``make()``, computed once per ``key`` for this region; ``anchor``: an object the result
        depends on too (a tensor of positions, named by identity and kept alive with the result;
        another region, named by its serial number and not kept: regions holding each other
        would form reference cycles, and a batch's plans would outlive it until the garbage
        collector runs)."""
        k: Any
        if isinstance(anchor, Region):
            k, kept = (key, "region", anchor._serial), None
        else:
            k, kept = (key if anchor is None else (key, id(anchor))), anchor
        hit = self._memo.get(k)
        if hit is None or hit[0] is not kept:
            hit = self._memo[k] = (kept, make())
        return hit[1]

    def grid(self) -> tuple[Tensor, Tensor]:
        """The rows ``(B, h, 1)`` and columns ``(B, 1, w)`` of the region, per copy."""

        def make() -> tuple[Tensor, Tensor]:
            rows, cols = _span(self.starts, self.size)
            return rows[:, :, None], cols[:, None, :]

        return self.memo("grid", make)  # type: ignore[no-any-return]

    def nbytes(self) -> int:
        """The bytes of the tensors the region keeps: its starts and what its memo holds (plans,
        the regions derived from it, theirs), each storage counted once."""
        seen: set[int] = set()
        total, todo = 0, [self.starts, *self._memo.values()]
        while todo:
            obj = todo.pop()
            if isinstance(obj, Tensor):
                storage = obj.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
            elif isinstance(obj, Region):
                todo += [obj.starts, *obj._memo.values()]
            elif isinstance(obj, Gather):
                todo += [obj.index, obj.outside]
            elif isinstance(obj, tuple):
                todo += list(obj)
        return total

    def copies(self) -> Tensor:
        """``arange(B)`` as ``(B, 1, 1)``: the copy index of a gather per copy."""
        return self.memo("copies", lambda: torch.arange(self.starts.shape[0], device=self.starts.device)[:, None, None])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Gather:
    """Where each element of a cut-out ``(B, h, w)`` comes from in a source ``(N, C, H, W)``: the row
    ``index`` ``(B*h*w,)`` of the source's channels-last rows ``(N*H*W, C)`` (clamped into it), and
    ``outside`` ``(B*h*w, 1)``, where the cut-out falls outside the source (``None``: nowhere).
    One ``index_select`` applies it (:meth:`take`); the plan is kept per region and layout."""

    index: Tensor
    outside: Tensor | None
    shape: tuple[int, int, int]

    @staticmethod
    def plan(rows: Tensor, cols: Tensor, height: int, width: int, per_copy: bool, may_leave: bool = True,
             dtype: torch.dtype = torch.int32, zero_row: bool = False) -> Gather:
        """From rows ``(B, h)`` and columns ``(B, w)`` of a source of ``height`` x ``width`` (one image
        shared by the copies, or ``per_copy``); ``may_leave``: whether some may fall outside it
        (the caller knows from the geometry: no read of the device). The index is kept in
        ``dtype``: 32 bits halve what the plans of a batch layout hold (``index_select`` takes them).
        ``zero_row``: the source is given with one zero row after its rows (:meth:`take_rows`),
        and what falls outside it reads that row."""
        b = rows.shape[0]
        index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
        if per_copy:
            index = index + (torch.arange(b, device=rows.device) * (height * width))[:, None, None]
        outside = None
        if may_leave:
            inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
            outside = ~inside.reshape(-1, 1)
        size = (b if per_copy else 1) * height * width
        if size + zero_row >= 2**31:
            dtype = torch.long
        index = index.reshape(-1)
        if zero_row and outside is not None:
            index, outside = index.masked_fill(outside[:, 0], size), None
        return Gather(index.to(dtype), outside, (b, rows.shape[1], cols.shape[1]))

    def take(self, t: Tensor, fill: float = 0.0) -> Tensor:
        """The cut-out of ``t`` ``(N, C, H, W)``, ``(B, C, h, w)`` in the channels-last layout, ``fill``
        outside ``t``."""
        c = t.shape[1]
        out = t.permute(0, 2, 3, 1).reshape(-1, c).index_select(0, self.index)  # (a view of channels-last t)
        if self.outside is not None:
            out.masked_fill_(self.outside, fill)
        return out.view(*self.shape, c).permute(0, 3, 1, 2)

    def take_rows(self, rows: Tensor) -> Tensor:
        """The cut-out, ``(B, C, h, w)`` channels-last, of a source given as its channels-last rows
        followed by a zero row, ``(N*H*W + 1, C)``, for a plan made with ``zero_row``: one
        ``index_select`` writes it whole (zeros included)."""
        assert self.outside is None
        return rows.index_select(0, self.index).view(*self.shape, rows.shape[1]).permute(0, 3, 1, 2)


def _span(starts: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The rows ``(B, h)`` and columns ``(B, w)`` from ``starts`` ``(B, 2)`` on."""
    arange = torch.arange(max(size), device=starts.device)
    return starts[:, 0, None] + arange[: size[0]], starts[:, 1, None] + arange[: size[1]]


def cut(t: Tensor, region: Region) -> Tensor:
    """The ``region`` of the one-image activation ``t`` ``(1, C, H, W)``, per copy: ``(B, C, h, w)``."""
    height, width = t.shape[-2:]
    plan = region.memo(("cut", height, width),
                       lambda: Gather.plan(*_span(region.starts, region.size), height, width, False, False))
    return plan.take(t)  # type: ignore[no-any-return]


def crop(t: Tensor, starts: Tensor, size: tuple[int, int], fill: float | None = None) -> Tensor:
    """``out[b, :, i, j] = t[b or 0, :, starts[b, 0] + i, starts[b, 1] + j]``, ``(B, C, h, w)`` in the
    channels-last layout; where that falls outside ``t`` it is ``fill`` (``None``: the caller
    knows it never does). ``t`` holds one image (shared) or one per row of ``starts``; a caller
    that keeps the gather takes it from :func:`crop_plan`."""
    plan = crop_plan(starts, size, t.shape[-2], t.shape[-1], t.shape[0] > 1, fill is not None)
    return plan.take(t, 0.0 if fill is None else fill)


def crop_plan(starts: Tensor, size: tuple[int, int], height: int, width: int, per_copy: bool,
              may_leave: bool = True, zero_row: bool = False) -> Gather:
    """:func:`crop`'s gather (``zero_row``: see :meth:`Gather.plan`)."""
    return Gather.plan(*_span(starts, size), height, width, per_copy, may_leave, zero_row=zero_row)


def with_zero_row(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """A new channels-last ``(B, C, h, w)`` tensor to be written, and its rows ``(B*h*w + 1, C)``
    whose last row is zero: what a zero-filled cut-out of it gathers from without a second pass
    (:meth:`Gather.take_rows`)."""
    b, c, h, w = shape
    rows = torch.empty((b * h * w + 1, c), dtype=dtype, device=device)
    rows[-1].zero_()
    return rows.as_strided((b, c, h, w), (h * w * c, 1, w * c, c)), rows  # (one view: the host's time counts)


def to_full(d: Tensor, region: Region, like: Tensor | None = None) -> Tensor:
    """The difference ``d`` held on ``region``, written into a zero activation of full size (in the
    layout of ``like``, the clean activation, so that the model's ``.view`` calls work on it;
    channels-last without it)."""
    b, c = d.shape[:2]
    height, width = region.full
    if like is not None and like.is_contiguous():
        out = d.new_zeros((b, c, height, width))
        rows, cols = region.grid()
        out.permute(0, 2, 3, 1)[region.copies(), rows, cols] = d.permute(0, 2, 3, 1)
        return out
    out = torch.empty((b, c, height, width), dtype=d.dtype, device=d.device, memory_format=torch.channels_last)
    plan = region.memo(("full", height, width),
                       lambda: Gather.plan(*_span(region.starts, region.size), height, width, True, False, torch.long))
    out.zero_().permute(0, 2, 3, 1).view(-1, c).index_copy_(0, plan.index, d.permute(0, 2, 3, 1).reshape(-1, c))
    return out


def recrop(d: Tensor, region: Region, target: Region, rows: Tensor | None = None) -> Tensor:
    """``d`` (held on ``region``) on ``target`` of the same activation (which holds ``region``),
    zero where ``region`` ends; ``rows``: ``d``'s from :func:`with_zero_row`, if made so."""
    grows = target.size != region.size  # (else the same region: nothing falls outside)
    zero_row = rows is not None and grows
    plan = region.memo(("recrop", zero_row), lambda: crop_plan(target.starts - region.starts, target.size,
                                                               *region.size, True, grows, zero_row), anchor=target)
    return plan.take_rows(rows) if zero_row else plan.take(d)  # type: ignore[no-any-return]


def window_input(d: Tensor, region: Region, reads: Tensor, size: tuple[int, int], rows: Tensor | None = None) -> Tensor:
    """The input a sliding window reads (:func:`window_of`'s ``reads`` and ``size``) from ``d`` held
    on ``region``: zero beyond the region and beyond the activation's border (zero padding);
    ``rows``: ``d``'s from :func:`with_zero_row`, if made so (one pass instead of two)."""
    zero_row = rows is not None
    plan = region.memo(("input", size, zero_row),
                       lambda: crop_plan(reads - region.starts, size, *region.size, True, zero_row=zero_row),
                       anchor=reads)
    return plan.take_rows(rows) if zero_row else plan.take(d)  # type: ignore[no-any-return, arg-type]


def window_of(region: Region, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
              out_full: tuple[int, int]) -> tuple[Region, Tensor, tuple[int, int]]:
    """The outputs of a sliding window (convolution, pooling: ``kernel``, ``stride``, ``padding``, no
    dilation) that read ``region``: their region, and the input rows and columns they read (start
    per copy, size). Computed once per region and window."""
    return region.memo(("window", kernel, stride, padding, out_full),  # type: ignore[no-any-return]
                       lambda: _window_of(region, kernel, stride, padding, out_full))


def _window_of(region: Region, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               out_full: tuple[int, int]) -> tuple[Region, Tensor, tuple[int, int]]:
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
