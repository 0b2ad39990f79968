"""Image folders of any size, read lazily: ``folder:PATH`` with ``image_size``.

A folder holds one sub-folder of images per class (PNG, JPEG, BMP, GIF, TIFF, WebP), or ``train``
and ``test`` folders of those. Listing it reads no pixels; images are decoded when a batch
asks for them (``dataset.x[positions]``), so a run over thousands of photographs keeps one
batch in memory (the memory freed by the previous batch is given back first: :mod:`salmap.data.heap`). Each image is decoded to float in ``[0, 1]`` by its real bit depth (8- or
16-bit), turned into RGB or grey as asked (``channels``: the model's), and with
``image_size=N`` resized so that its shorter side is ``N`` (antialiased bilinear) and
centre-cropped to ``N x N`` -- the usual ImageNet evaluation transform.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from salmap.data import base, limits
from salmap.data.base import IMAGE_SUFFIXES, Dataset, class_images, class_names_of, split_per_class
from salmap.data.heap import release_freed_memory

log = logging.getLogger(__name__)

#: Pillow modes of one grey channel
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(path: str | Path, channels: int | None = None) -> Tensor:
    """One image file as float ``(C, H, W)`` in ``[0, 1]``, scaled by its bit depth.

    8-bit images are divided by 255 and 16-bit ones (PNG ``I;16``) by 65535; ``channels``
    is 1 (grey: ITU-R 601 luma of colour images) or 3 (RGB: grey replicated); ``None``
    keeps the image's own (1 for grey, 3 otherwise). Alpha is dropped. Raises
    ``ValueError`` naming the file when it cannot be decoded.
    """
    from PIL import Image

    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    with _decoding(path), Image.open(path) as im:
        _check_pixels(im, path)
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
        elif mode == "F":
            arr = np.asarray(im, dtype=np.float32)
        elif mode in GREY_MODES:
            arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"image file {path} holds values outside [0, 1] after decoding (mode {mode})")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif channels == 1 and x.shape[0] == 3:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return x.contiguous()


def resize_crop(x: Tensor, size: int) -> Tensor:
    """``(C, H, W)`` resized so that the shorter side is ``size`` (antialiased bilinear), centre-cropped to ``size x size``."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp(0, 1).contiguous()


class _TooLarge(ValueError):
    """An image larger than the pixel limit (raised as it is, not as an undecodable file)."""


def _check_pixels(im: Any, path: str | Path) -> None:
    """Refuse an image whose header declares more pixels than ``salmap.data.limits.MAX_IMAGE_PIXELS``
    before it is decoded (a PNG of a few hundred KB can declare 400 million pixels)."""
    if im.width * im.height > limits.MAX_IMAGE_PIXELS:
        raise _TooLarge(f"image file {path} is {im.width}x{im.height} pixels, more than the limit of "
                         f"{limits.MAX_IMAGE_PIXELS} (salmap.data.limits.MAX_IMAGE_PIXELS)")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with _decoding(path), Image.open(path) as im:
        _check_pixels(im, path)
        return im.size[1], im.size[0]


@contextmanager
def _decoding(path: str | Path) -> Iterator[None]:
    """Turn PIL's failures on ``path`` into one ``ValueError`` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except _TooLarge:
        raise
    except Image.DecompressionBombError as err:
        raise ValueError(f"image file {path} is refused as a decompression bomb: {err}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ValueError(f"image file {path} could not be decoded: {err}") from None


class LazyImages:
    """The images of a folder, decoded on indexing: ``images[positions]`` is a float batch.

    ``len``, ``shape`` (``(N, C, H, W)``) and :meth:`select` read no pixels. Indexing with an
    int gives ``(C, H, W)``; with a slice, a sequence or a tensor of positions, a stacked
    batch. ``to``/``cpu``/``numpy`` decode *every* image (the whole set in memory: avoid
    them for large folders; iterate with :meth:`salmap.data.Dataset.batches`).
    """

    dtype = torch.float32

    def __init__(self, files: Sequence[Path], channels: int, size: int | None, sample: tuple[int, int, int]) -> None:
        self.files = list(files)
        self.channels = channels
        self.size = size
        self.sample_shape = sample

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), *self.sample_shape))

    def __len__(self) -> int:
        return len(self.files)

    def dim(self) -> int:
        return 4

    def _one(self, i: int) -> Tensor:
        path = self.files[i]
        x = decode_image(path, self.channels)
        if self.size is not None:
            return resize_crop(x, self.size)
        if tuple(x.shape) != self.sample_shape:
            raise ValueError(
                f"image file {path} has shape {tuple(x.shape)}, but earlier images have {self.sample_shape}; "
                "pass image_size (--image-size N) to resize and crop them to one size"
            )
        return x

    def _positions(self, key: Any) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self.files)))[key]
        if isinstance(key, Tensor):
            if key.dtype == torch.bool:
                key = key.nonzero().flatten()
            return [int(i) for i in key.reshape(-1).tolist()]
        return [int(i) for i in np.asarray(key).reshape(-1).tolist()]

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, (int, np.integer)):
            return self._one(int(key))
        positions = self._positions(key)
        batch = torch.empty((len(positions), *self.sample_shape), dtype=self.dtype)
        # the previous batch's tensors are freed by now. A run reuses a few batches' worth of free
        # heap from batch to batch (2 to 8 of 224 x 224 x 32 measured); beyond 8, give the pages
        # back before decoding this one, so that the freed memory left resident stays bounded by
        # the batch, not the number of batches (salmap.data.heap)
        release_freed_memory(allowance=8 * batch.numel() * batch.element_size())
        for row, i in enumerate(positions):  # each image straight into its row: no list of copies
            batch[row] = self._one(i)
        return batch

    def select(self, key: Any) -> LazyImages:
        """The images at ``key`` (a slice or positions), still undecoded."""
        return LazyImages([self.files[i] for i in self._positions(key)], self.channels, self.size, self.sample_shape)

    def materialize(self) -> Tensor:
        """Every image decoded, ``(N, C, H, W)`` (the whole set in memory)."""
        if len(self.files) > 1000:
            log.warning("decoding all %d images of %s into memory", len(self.files), self.files[0].parent.parent)
        return self[:]

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.materialize().to(*args, **kwargs)

    def cpu(self) -> Tensor:
        return self.materialize()

    def numpy(self) -> np.ndarray:
        return self.materialize().numpy()

    def digest(self) -> str:
        """A hash of the files (names, sizes, modification times) and the decoding settings."""
        h = hashlib.sha256(f"{self.channels}:{self.size}".encode())
        for path in self.files:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


class StreamDataset(Dataset):
    """A :class:`~salmap.data.Dataset` whose ``x`` is :class:`LazyImages` (decoded per batch)."""

    x: LazyImages  # type: ignore[assignment]

    def subset(self, n: int | None) -> Dataset:
        if n is None:
            return self
        if n > len(self):
            raise ValueError(f"n must be at most the dataset size {len(self)} for {self.name}, got {n}")
        return self.select(slice(0, n))

    def select(self, indices: Any) -> Dataset:
        key = indices if isinstance(indices, slice) else torch.as_tensor(indices, dtype=torch.long)
        images: Any = self.x.select(key)
        return StreamDataset(images, self.y[key], self.class_names, self.name, self.task, self.info)

    def digest(self) -> str:
        h = hashlib.sha256(self.x.digest().encode() + self.y.numpy().tobytes())
        return h.hexdigest()[:16]


def _class_files(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of ``root``'s class sub-folders, labelled by ``classes`` (default: its own, sorted)."""
    classes = class_names_of(root) if classes is None else classes
    if not any((root / name).is_dir() for name in classes):
        raise ValueError(f"image folder {root} has no class sub-folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():  # a class the other split has
            continue
        found = class_images(root / name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, labels, classes


def stream_folder(
    path: str | Path, split: str = "test", image_size: int | None = None, channels: int | None = None,
) -> StreamDataset:
    """A folder of class sub-folders (or ``train``/``test`` folders of them) as a :class:`StreamDataset`.

    Without ``train``/``test`` folders, 20% of each class (seeded) is the test split.
    ``image_size``: resize the shorter side and centre-crop to ``image_size x image_size``
    (needed when the images differ in size). ``channels``: 1 or 3 (the model's); default
    the first image's (grey gives 1, colour 3).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a folder")
    limits.check_image_size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        parts = ["train", "test"] if split == "all" else [split]
        classes = class_names_of(root / "train", root / "test")
        listed = [_class_files(root / p, classes) for p in parts]  # one labelling for both splits
        files = [f for part in listed for f in part[0]]
        labels = [lab for part in listed for lab in part[1]]
        sizes = [_image_size(f) for f in files]
    else:
        files, labels, classes = _class_files(root)
        # every header is read (no pixels): an unreadable file fails now, named, whatever the split
        sizes = [_image_size(f) for f in files]
        y_all = torch.tensor(labels)
        if split != "all":
            counts = torch.bincount(y_all)
            per_class = max(1, int(counts[counts > 0].min()) // 5)
            train_idx, test_idx = split_per_class(y_all, per_class, seed=0)
            keep = (train_idx if split == "train" else test_idx).tolist()
            files, labels, sizes = [files[i] for i in keep], [labels[i] for i in keep], [sizes[i] for i in keep]
    if not files:  # (one image per class: all of them test images)
        raise base.no_samples(f"folder:{path}", split)
    first = decode_image(files[0], channels)
    channels = int(first.shape[0])
    if image_size is not None:
        sample = (channels, image_size, image_size)
    else:
        sample = (channels, *first.shape[1:])
        for f, size in zip(files, sizes, strict=True):
            if size != sample[1:]:
                raise ValueError(
                    f"image file {f} has size {size}, but {files[0]} has {tuple(sample[1:])}; "
                    "pass image_size (--image-size N) to resize and crop them to one size"
                )
    images = LazyImages(files, channels, image_size, sample)
    return StreamDataset(images, torch.tensor(labels, dtype=torch.long), classes, f"folder:{root}",  # type: ignore[arg-type]
                         info={"image_size": image_size, "channels": channels})
