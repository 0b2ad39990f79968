"""Limits on the sizes that untrusted data files declare, checked before allocating.

An 88-byte labels file can declare a label of two billion, a few kilobytes of gzip or
npz can declare gigabytes, a PNG can declare a billion pixels. Every reader in
:mod:`salmap.data.files` checks what a file declares against these limits (and against
the file's own length) before anything is allocated, and names the file when it refuses.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

#: Limits on what a data file may declare, checked before anything is allocated: the
#: elements of one array (2**30 float32 values are 4 GiB) and the number of classes.
#: Raise them (``salmap.data.limits.MAX_ELEMENTS = ...``) for larger data you trust.
MAX_ELEMENTS = 2**30
MAX_CLASSES = 100_000
#: Images larger than this many pixels are refused before they are decoded (PNG bombs).
MAX_IMAGE_PIXELS = 2**26


def check_image_size(image_size: int | None) -> None:
    """``image_size`` (``--image-size``): a positive integer whose square is within
    :data:`MAX_IMAGE_PIXELS`, checked before a batch of that size is allocated."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size (--image-size) must be a positive integer, got {image_size!r}")
    if image_size * image_size > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image_size (--image-size) must be at most {math.isqrt(MAX_IMAGE_PIXELS)} (image_size**2 within "
            f"salmap.data.limits.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels), got {image_size}"
        )


def check_class_labels(labels: np.ndarray | Tensor, source: str) -> int:
    """Check class labels before anything is sized by them: integers in
    ``[0, MAX_CLASSES)``. Returns the number of classes they imply (``max + 1``)."""
    if labels.size == 0 if isinstance(labels, np.ndarray) else labels.numel() == 0:
        return 0
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"{source}: labels must be class indices >= 0, found {low}")
    if high >= MAX_CLASSES:
        raise ValueError(
            f"{source}: label {high} is above the limit of {MAX_CLASSES} classes (salmap.data.limits.MAX_CLASSES)"
        )
    return high + 1


def check_npz_members(file: Path) -> None:
    """Read each array's header (not its data) and refuse declared sizes above the limits,
    so a small compressed file cannot make ``np.load`` allocate gigabytes."""
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    try:
                        version = np.lib.format.read_magic(member)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, dtype = read(member)
                    except ValueError as err:
                        raise ValueError(f"npz file {file}: array {info.filename[:-4]!r} has a corrupt header: "
                                         f"{err}") from None
                count = math.prod(shape)
                if count > MAX_ELEMENTS:
                    raise ValueError(
                        f"npz file {file}: array {info.filename[:-4]!r} declares shape {shape} ({count} values), "
                        f"more than the limit of {MAX_ELEMENTS} (salmap.data.limits.MAX_ELEMENTS)"
                    )
                if dtype.hasobject:
                    raise ValueError(f"npz file {file}: array {info.filename[:-4]!r} holds Python objects (pickles), "
                                     "which are never loaded")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"npz file {file} could not be read: {err}") from None


def image_array(im: Any, mode: str, source: str = "image") -> np.ndarray:
    """A Pillow image as float32 in [0, 1], ``(H, W)`` for ``mode="L"``, else ``(H, W, 3)``.

    16-bit grey images (modes ``I;16*`` and ``I``) are scaled by 65535, not clipped to 8 bits.
    """
    if mode == "L" and (im.mode.startswith("I;16") or im.mode == "I"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{source}: a 32-bit integer image must hold values in [0, 65535], got [{arr.min()}, {arr.max()}]")
        return (arr / 65535.0).astype(np.float32)
    return np.asarray(im.convert(mode), dtype=np.float32) / 255.0
