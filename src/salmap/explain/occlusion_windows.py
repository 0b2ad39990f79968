"""The geometry of occlusion (:class:`salmap.explain.occlusion.Occlusion`): patch sizes per
dimension, the sliding windows as 0/1 matrices, the patch masks, the batches of occluded copies,
and the fill the patches hold."""

from __future__ import annotations

import numbers
import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from salmap._validate import Bounds

__all__ = [
    "chunks", "fill_values", "grows", "kept_layouts", "patch_masks", "patch_starts", "patches", "per_dim", "sizes",
    "stride_note", "through_windows", "windows",
]


def chunks(images: Tensor, count: int, size: int, by_image: bool) -> list[tuple[int, int, int]]:
    """Row ranges ``(lo, hi, image)`` of at most ``size`` of the (image-sorted) pairs; with
    ``by_image`` none mixes two images (each image's pairs split evenly, so that the batches
    padded to one shape waste little) and ``image`` says whose they are (else -1)."""
    total = images.shape[0]
    if not by_image:
        return [(lo, min(lo + size, total), -1) for lo in range(0, total, size)]
    out, start = [], 0
    for i, n in enumerate(torch.bincount(images, minlength=count).tolist()):
        step = -(-n // -(-n // size)) if n else 1  # ceil(n / number of batches)
        out += [(lo, min(lo + step, start + n), i) for lo in range(start, start + n, step)]
        start += n
    return out


def grows(device: torch.device) -> bool:
    """Whether batches of region-held copies grow past ``batch_size`` once the first batch has
    measured their memory (:meth:`~salmap.explain.occlusion_deltas.Deltas.growth`): on CUDA, where
    bigger batches fill the device; not on the CPU, where a batch of a few hundred region-held
    copies already runs slower per copy than a smaller one (its working set leaves the caches)."""
    return device.type == "cuda"


def kept_layouts(chunks: list[tuple[int, int, int]], grown: int | None = None) -> tuple[int, set[int]]:
    """How many batch layouts of :func:`chunks` to keep for the next image (the most batches of one
    image), and the images whose layouts no later image repeats: the last, and ``grown``, whose
    further batches were regrouped after its first."""
    keep = max(Counter(i for _, _, i in chunks).values(), default=1)
    once = {chunks[-1][2]} if chunks else set()
    if grown is not None and len(chunks) > 1 and chunks[1][2] == grown:
        once.add(grown)
    return keep, once


def sizes(name: str, value: Any) -> tuple[int, ...]:
    """An int or a sequence of ints (NumPy integers too, an array or a tensor of them), each ``>= 1``, as a tuple of ints."""
    value = value.tolist() if isinstance(value, Tensor) else value
    values = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a positive int or a sequence of them, got {value!r}") from None
    if not out:
        raise ValueError(f"{name} must be a positive int or a sequence of them, got {value!r}")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise ValueError(f"{name} must be a positive int or a sequence of them (>= 1), got {value!r}")
    return tuple(int(v) for v in out)


def per_dim(name: str, sizes: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[int, ...]:
    if len(sizes) == 1:
        return sizes * len(spatial)
    if len(sizes) != len(spatial):
        raise ValueError(f"{name} must have one size per spatial dimension {spatial}, got {sizes}")
    return sizes


def stride_note(stride: tuple[int, ...], patch: tuple[int, ...], spatial: tuple[int, ...]) -> str | None:
    """What a stride larger than the input (in a dimension the patch does not fill) does, or None.

    It is accepted, as captum accepts it, but it is most likely a mistake: the patch then sits at the
    dimension's start and, flush with its border, at its end only (captum skips every window but the
    first), the positions of any stride from ``size - patch`` up."""
    wide = [i for i, (s, k, n) in enumerate(zip(stride, patch, spatial, strict=True)) if s > n and k < n]
    if not wide:
        return None
    size = "x".join(str(n) for n in spatial)
    same = tuple(spatial[i] - patch[i] for i in wide)
    dims = "that dimension" if len(wide) == 1 else "those dimensions"
    return (f"occlusion's stride {_one(stride)} is larger than the input ({size}): the patch is placed only at the "
            f"start and flush with the end of {dims}, as with any stride of at least {_one(same)} (expected a stride "
            "no larger than the input)")


def _one(values: tuple[int, ...]) -> int | tuple[int, ...]:
    return values[0] if len(set(values)) == 1 else values


def patches(patch: tuple[int, ...], stride: tuple[int, ...],
            spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The patch and the stride per spatial dimension (:func:`per_dim`), the patch checked against
    the input's ``spatial`` size; :func:`stride_note` as a ``UserWarning`` pointing at the caller of
    ``attribute`` (accepted, as captum does, but most likely a mistake)."""
    patch, stride = per_dim("patch", patch, spatial), per_dim("stride", stride, spatial)
    if any(k > n for k, n in zip(patch, spatial, strict=True)):
        raise ValueError(f"patch {patch} is larger than the input's spatial size {spatial}")
    if note := stride_note(stride, patch, spatial):
        warnings.warn(note, UserWarning, stacklevel=4)  # (patches, Occlusion._explain, attribute)
    return patch, stride


def windows(size: int, patch: int, stride: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(positions, size)`` 0/1 matrix: row ``p`` marks the features patch ``p`` covers."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)  # the last patch covers the border
    first = torch.tensor(starts, device=device)[:, None]
    index = torch.arange(size, device=device)[None]
    return ((index >= first) & (index < first + patch)).to(dtype)


def through_windows(values: Tensor, windows: list[Tensor], transpose: bool) -> Tensor:
    """Contract every dimension but the first with the window matrices.

    ``transpose=False``: ``(B, P_1, ..., P_n)`` per-position values to ``(B, S_1, ..., S_n)``
    sums over the patches covering each feature. ``transpose=True``: ``(B, S_1, ...)``
    feature values to ``(B, P_1, ...)`` sums over each patch's features.
    """
    for w in windows:
        # tensordot removes axis 1 and appends the new axis last: after n steps, the order is restored.
        values = torch.tensordot(values, w.t() if transpose else w, dims=([1], [0]))
    return values


def patch_masks(pos: Tensor, windows: list[Tensor], grid: tuple[int, ...]) -> Tensor:
    """Bool masks ``(n, *spatial)`` of the patches at flat grid positions ``pos``."""
    index = []
    for n in reversed(grid):  # unravel the flat (row-major) position
        index.append(pos % n)
        pos = pos // n
    index.reverse()
    mask = windows[0][index[0]].bool()
    for d in range(1, len(windows)):
        rows = windows[d][index[d]].bool()
        mask = mask.unsqueeze(-1) & rows.view(rows.shape[0], *([1] * d), rows.shape[1])
    return mask


def patch_starts(firsts: list[Tensor], pos: Tensor, columns: int) -> Tensor:
    """Where the 2-D patches at the flat grid positions ``pos`` start, ``(B, 2)``; ``firsts``: each
    patch position's first feature, per dimension; ``columns``: positions per row."""
    return torch.stack([firsts[0][pos // columns], firsts[1][pos % columns]], 1)


def fill_values(fill: str | float, bounds: Bounds, seed: int, x: Tensor) -> Tensor:
    """What replaces a patch of ``x``: a 0-dim tensor (``"zero"``, ``"grey"``, a number), per image
    ``(B, C, 1, ...)`` (``"mean"``) or ``(1, C, *spatial)`` (``"random"``)."""
    low, high = bounds.like(x)
    if not isinstance(fill, str):
        return torch.tensor(fill, dtype=x.dtype, device=x.device)
    if fill == "zero":
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if fill == "grey":
        return torch.as_tensor((low + high) / 2, dtype=x.dtype, device=x.device)
    if fill == "mean":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    # One random image shared by the batch, so a sample's map does not depend on its batch.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand((1, *x.shape[1:]), generator=gen, dtype=torch.float64)
    low, high = bounds.like(noise)
    return (low + (high - low) * noise).to(device=x.device, dtype=x.dtype)
