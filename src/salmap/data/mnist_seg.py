"""Segmentation sets built from the real digits of ``mnist-sample``: ``mnist-seg`` and
``mnist-seg-multi``.

Each image is a 64x64 canvas holding one or two real MNIST digits at seeded positions,
on clutter that is not a digit (speckle noise and straight strokes). The mask comes from
the digit strokes only: a pixel belongs to a digit where that digit's intensity exceeds
:data:`STROKE_THRESHOLD`. ``mnist-seg`` is binary (background / digit); ``mnist-seg-multi``
has eleven classes (background, then the digits 0-9). Training images use the training
digits of ``mnist-sample`` and test images its test digits, so no test digit is ever seen
in training. Generation is deterministic, needs no files and takes about a second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from salmap.data.base import Dataset
from salmap.data.packaged import DIGIT_NAMES, mnist_sample
from salmap.data.registry import register_builtin

CANVAS = 64
DIGIT = 28
#: a digit pixel brighter than this belongs to the digit's mask
STROKE_THRESHOLD = 0.5
#: images per split (the test set uses the 1,000 test digits, the train set the 4,000 train digits)
SIZES = {"train": 4000, "test": 1000}
_SEEDS = {"train": 1, "test": 2}
# MNIST strokes lie in the central 20x20 of the 28x28 box; two digits' stroke boxes never overlap.
_STROKE_BOX = 20


def _clutter(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 64, 64)`` clutter: faint noise, bright speckles and one to three straight strokes."""
    rows = np.arange(CANVAS, dtype=np.float32)[:, None]
    cols = np.arange(CANVAS, dtype=np.float32)[None, :]
    out = rng.uniform(0.0, 0.1, (n, CANVAS, CANVAS)).astype(np.float32)
    speckle = rng.random((n, CANVAS, CANVAS)) < 0.015
    out = np.where(speckle, rng.uniform(0.3, 1.0, (n, CANVAS, CANVAS)).astype(np.float32), out)
    strokes = 3
    r0, c0 = (rng.uniform(0, CANVAS, (2, n, strokes)).astype(np.float32))
    angle = rng.uniform(0, np.pi, (n, strokes))
    length = rng.uniform(8, 30, (n, strokes))
    dr, dc = (length * np.cos(angle)).astype(np.float32), (length * np.sin(angle)).astype(np.float32)
    width = rng.uniform(0.8, 1.6, (n, strokes)).astype(np.float32)
    level = rng.uniform(0.5, 1.0, (n, strokes)).astype(np.float32)
    used = np.arange(strokes)[None, :] < rng.integers(1, strokes + 1, (n, 1))
    for i in range(n):
        for s in range(strokes):
            if not used[i, s]:
                continue
            # Distance of every pixel to the segment, on the bounding box of the stroke only.
            a, b = r0[i, s], c0[i, s]
            lo_r, hi_r = int(max(min(a, a + dr[i, s]) - 3, 0)), int(min(max(a, a + dr[i, s]) + 4, CANVAS))
            lo_c, hi_c = int(max(min(b, b + dc[i, s]) - 3, 0)), int(min(max(b, b + dc[i, s]) + 4, CANVAS))
            if lo_r >= hi_r or lo_c >= hi_c:
                continue
            pr, pc = rows[lo_r:hi_r] - a, cols[:, lo_c:hi_c] - b
            t = np.clip((pr * dr[i, s] + pc * dc[i, s]) / (dr[i, s] ** 2 + dc[i, s] ** 2), 0.0, 1.0)
            dist = np.sqrt((pr - t * dr[i, s]) ** 2 + (pc - t * dc[i, s]) ** 2)
            ink = np.clip(width[i, s] + 0.5 - dist, 0.0, 1.0) * level[i, s]
            box = out[i, lo_r:hi_r, lo_c:hi_c]
            np.maximum(box, ink, out=box)
    return out


def _positions(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` digit boxes whose stroke boxes do not overlap."""
    span = CANVAS - DIGIT + 1
    first = (int(rng.integers(span)), int(rng.integers(span)))
    if count == 1:
        return [first]
    for _ in range(100):
        r, c = int(rng.integers(span)), int(rng.integers(span))
        if abs(r - first[0]) >= _STROKE_BOX or abs(c - first[1]) >= _STROKE_BOX:
            return [first, (r, c)]
    # Opposite corner: always far enough from any first position on a 64x64 canvas.
    return [first, (span - 1 - first[0] if first[0] < span // 2 else 0, first[1])]


@lru_cache(maxsize=4)
def _generate(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 64, 64)`` and eleven-class masks ``(N, 64, 64)`` of one split (cached)."""
    if split == "all":
        parts = [_generate(s) for s in ("train", "test")]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    source = mnist_sample(split)
    digits, labels = source.x[:, 0].numpy(), source.y.numpy()
    rng = np.random.default_rng(_SEEDS[split])
    n = SIZES[split]
    canvas = _clutter(rng, n)
    masks = np.zeros((n, CANVAS, CANVAS), dtype=np.int64)
    counts = rng.integers(1, 3, n)
    # Every digit of the split is used before any is used again (a fresh permutation per pass).
    order = np.concatenate([rng.permutation(len(labels)) for _ in range(-(-int(counts.sum()) // len(labels)))])
    k = 0
    for i in range(n):
        for r, c in _positions(rng, int(counts[i])):
            d = order[k]
            k += 1
            box = (slice(r, r + DIGIT), slice(c, c + DIGIT))
            canvas[i][box] = np.maximum(canvas[i][box], digits[d])
            masks[i][box] = np.where(digits[d] > STROKE_THRESHOLD, 1 + labels[d], masks[i][box])
    return torch.from_numpy(canvas[:, None]), torch.from_numpy(masks)


def _dataset(split: str, multi: bool) -> Dataset:
    x, y = _generate(split)
    # Copies, so that a caller editing its tensors cannot change the cached set.
    y = y.clone() if multi else (y > 0).long()
    name = "mnist-seg-multi" if multi else "mnist-seg"
    names = ["background", *DIGIT_NAMES] if multi else ["background", "digit"]
    info = {"source": "mnist-sample digits on 64x64 clutter", "stroke_threshold": STROKE_THRESHOLD}
    return Dataset(x.clone(), y, names, name, task="segmentation", info=info)


@register_builtin("mnist-seg")
def mnist_seg(split: str = "test") -> Dataset:
    """Binary segmentation (0 background, 1 digit) of one or two real MNIST digits on clutter.

    ``x`` is ``(N, 1, 64, 64)`` in ``[0, 1]``, ``y`` is ``(N, 64, 64)`` long. Train: 4,000
    images from the 4,000 training digits of ``mnist-sample``; test: 1,000 images from its
    1,000 test digits.

    Examples
    --------
    >>> ds = mnist_seg("test")
    >>> ds.x.shape, ds.y.shape, ds.class_names
    (torch.Size([1000, 1, 64, 64]), torch.Size([1000, 64, 64]), ['background', 'digit'])
    """
    return _dataset(split, multi=False)


@register_builtin("mnist-seg-multi")
def mnist_seg_multi(split: str = "test") -> Dataset:
    """The images of ``mnist-seg`` with eleven classes: 0 background, ``1 + d`` for digit ``d``."""
    return _dataset(split, multi=True)
