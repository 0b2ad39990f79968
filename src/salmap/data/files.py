"""File-backed datasets: ``idx:PATH`` (MNIST format), ``npz:PATH`` and ``folder:PATH``.

Files are untrusted input: every reader checks sizes and shapes and names the file
when something does not match. Nothing is unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salmap.data import limits
from salmap.data.base import (
    IMAGE_SUFFIXES,
    Dataset,
    class_images,
    class_names_of,
    split_per_class,
    take_split,
)
from salmap.data.limits import check_class_labels, check_npz_members, image_array
from salmap.data.registry import register_prefix

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array, checking its header and length.

    The header's shape is checked against :data:`salmap.data.limits.MAX_ELEMENTS` before the body is read,
    and a gzipped file is decompressed only as far as the header says (a gzip bomb stops there).
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw_file:
            gzipped = raw_file.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as fh:
            return _read_idx_stream(fh, path)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"IDX file {path} could not be read: {err}") from None


def _read_idx_stream(fh: Any, path: Path) -> np.ndarray:
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise ValueError(f"IDX file {path} has no valid IDX header (magic {magic.hex()})")
    dtype = _IDX_DTYPES[magic[2]]
    ndim = magic[3]
    dims = fh.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"IDX file {path} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", dims)
    count = math.prod(shape)  # Python ints: no overflow, whatever the header says
    if count > limits.MAX_ELEMENTS:
        raise ValueError(
            f"IDX file {path} declares an array of shape {shape} ({count} values), more than the limit of "
            f"{limits.MAX_ELEMENTS} (salmap.data.limits.MAX_ELEMENTS)"
        )
    expected = count * dtype.itemsize
    body = fh.read(expected + 1)
    if len(body) != expected:
        found = f"more than {expected}" if len(body) > expected else str(len(body))
        raise ValueError(
            f"IDX file {path} is truncated or corrupt: header shape {shape} needs {expected} bytes, found {found}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find_idx(folder: Path, split: str, kind: str) -> Path:
    prefix = "train" if split == "train" else "t10k"
    stem = f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte"
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"IDX folder {folder} has no {stem}[.gz] file for split {split!r}")


@register_prefix("idx")
def load_idx(path: str, split: str = "test") -> Dataset:
    """A folder of MNIST-format IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``).

    ``split="all"`` joins train and test. Class names are ``0..K-1`` unless the folder
    holds a ``classes.txt`` with one name per line.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"IDX dataset path {folder} is not a folder")
    parts = ["train", "test"] if split == "all" else [split]
    xs, ys = [], []
    for part in parts:
        img_path, lab_path = _find_idx(folder, part, "images"), _find_idx(folder, part, "labels")
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim not in (3, 4):
            raise ValueError(f"IDX file {img_path} must hold images (N, H, W), got shape {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"IDX files {img_path} and {lab_path} do not match: {images.shape[0]} images, labels of shape {labels.shape}"
            )
        check_class_labels(labels, f"IDX labels file {lab_path}")
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        x = torch.from_numpy(images.astype(np.float32) / scale)
        xs.append(x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2))
        ys.append(torch.from_numpy(labels.astype(np.int64)))
    x, y = torch.cat(xs), torch.cat(ys)
    names = _class_names(folder, int(y.max()) + 1 if y.numel() else 0)
    return _checked(Dataset(x.contiguous(), y, names, f"idx:{folder}"), folder)


@register_prefix("npz", file=True)
def load_npz(path: str, split: str = "test") -> Dataset:
    """An ``.npz`` file with arrays ``x`` (``(N,H,W)``, ``(N,C,H,W)`` or ``(N,H,W,C)``) and ``y``.

    Optional arrays: ``x_test``/``y_test`` (then ``x``/``y`` are the training set) and
    ``class_names``. Without a test set, 20% of each class (seeded) is the test split.
    Integer images are scaled from 0..255 to [0, 1].
    """
    file = Path(path)
    check_npz_members(file)
    try:
        with np.load(file, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"npz file {file} could not be read: {err}") from None
    for key in ("x", "y"):
        if key not in data:
            raise ValueError(f"npz file {file} must hold arrays 'x' and 'y', found {sorted(data)}")
    if ("x_test" in data) != ("y_test" in data):
        have, missing = ("x_test", "y_test") if "x_test" in data else ("y_test", "x_test")
        raise ValueError(f"npz file {file} holds {have} but no {missing}: a test set needs both")
    x, y = _npz_images(data["x"], file), _npz_labels(data["y"], file)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"npz file {file}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    num = check_class_labels(y, f"npz file {file} (y)")
    if "x_test" in data:
        xt, yt = _npz_images(data["x_test"], file), _npz_labels(data["y_test"], file)
        if xt.shape[0] != yt.shape[0]:
            raise ValueError(f"npz file {file}: x_test has {xt.shape[0]} samples but y_test has {yt.shape[0]}")
        if xt.shape[1:] != x.shape[1:]:
            raise ValueError(f"npz file {file}: x_test images have shape {tuple(xt.shape[1:])}, x {tuple(x.shape[1:])}")
        num = max(num, check_class_labels(yt, f"npz file {file} (y_test)"))
        x, y = {"train": (x, y), "test": (xt, yt), "all": (torch.cat([x, xt]), torch.cat([y, yt]))}[split]
    elif y.numel():  # (no samples at all: every split is empty, refused by load_dataset naming the split)
        counts = torch.bincount(y)
        per_class = max(1, int(counts[counts > 0].min()) // 5)
        train_idx, test_idx = split_per_class(y, per_class, seed=0)
        x, y = take_split(x, y, split, train_idx, test_idx)
    if "class_names" in data:
        names = [str(n) for n in data["class_names"].reshape(-1).tolist()]
        if len(names) < num:
            raise ValueError(
                f"npz file {file}: class_names lists {len(names)} names but the labels need {num} "
                f"(labels go up to {num - 1})"
            )
    else:
        names = [str(i) for i in range(num)]
    return _checked(Dataset(x, y, names, f"npz:{file}"), file)


def _npz_images(arr: np.ndarray, file: Path) -> Tensor:
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise ValueError(f"npz file {file}: x must be (N,H,W), (N,C,H,W) or (N,H,W,C), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"npz file {file}: x must be numeric, got dtype {arr.dtype}")
    scale = 255.0 if np.issubdtype(arr.dtype, np.integer) else 1.0
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / scale)


def _npz_labels(arr: np.ndarray, file: Path) -> Tensor:
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"npz file {file}: y must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


@register_prefix("folder")
def load_folder(path: str, split: str = "test") -> Dataset:
    """One sub-folder of images per class (PNG/JPEG/...), read with Pillow.

    Classes are the sub-folder names in sorted order. If the folder has ``train`` and
    ``test`` sub-folders, those are the splits; otherwise 20% of each class (seeded) is
    the test split. All images must have one size; grey images give 1 channel, colour 3.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = class_names_of(root / "train", root / "test")
        if split == "all":  # one labelling for both splits, whichever classes each holds
            a, b = _read_class_folders(root / "train", classes), _read_class_folders(root / "test", classes)
            return _checked(Dataset(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.class_names, f"folder:{root}"), root)
        return _read_class_folders(root / split, classes)
    ds = _read_class_folders(root)
    counts = torch.bincount(ds.y)
    per_class = max(1, int(counts.min()) // 5)
    train_idx, test_idx = split_per_class(ds.y, per_class, seed=0)
    x, y = take_split(ds.x, ds.y, split, train_idx, test_idx)
    return Dataset(x, y, ds.class_names, ds.name)


def _read_class_folders(root: Path, classes: list[str] | None = None) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    classes = class_names_of(root) if classes is None else classes
    if not any((root / name).is_dir() for name in classes):
        raise ValueError(f"image folder {root} has no class sub-folders")
    xs, ys, size, mode = [], [], None, None
    for label, name in enumerate(classes):
        if not (root / name).is_dir():  # a class the other split has
            continue
        files = class_images(root / name)
        for file in files:
            try:
                with Image.open(file) as im:
                    if im.width * im.height > limits.MAX_IMAGE_PIXELS:
                        raise ValueError(
                            f"image file {file} is {im.width}x{im.height} pixels, more than the limit of "
                            f"{limits.MAX_IMAGE_PIXELS} (salmap.data.limits.MAX_IMAGE_PIXELS)"
                        )
                    im.load()
                    if mode is None:
                        mode = "L" if im.mode in ("L", "1", "LA") or im.mode.startswith("I") else "RGB"
                    arr = image_array(im, mode, f"image file {file}")
            except Image.DecompressionBombError as err:
                raise ValueError(f"image file {file} is refused as a decompression bomb: {err}") from None
            except (OSError, UnidentifiedImageError, SyntaxError) as err:
                raise ValueError(f"image file {file} could not be read: {err}") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise ValueError(f"image file {file} has size {arr.shape}, but earlier images have {size}")
            xs.append(torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()))
            ys.append(label)
    if not xs:
        raise ValueError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Dataset(torch.stack(xs), torch.tensor(ys), classes, f"folder:{root}")


def _class_names(folder: Path, num: int) -> list[str]:
    names_file = folder / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) < num:
            raise ValueError(f"class names file {names_file} lists {len(names)} names, labels need {num}")
        return names
    return [str(i) for i in range(num)]


def _checked(ds: Dataset, source: Path) -> Dataset:
    bad = int((~torch.isfinite(ds.x)).sum())
    if bad:
        raise ValueError(f"dataset {source}: images must be finite and scale to [0, 1], got {bad} NaN/inf values")
    low, high = (float(ds.x.min()), float(ds.x.max())) if ds.x.numel() else (0.0, 0.0)
    if low < 0 or high > 1:
        raise ValueError(f"dataset {source}: images must be finite and scale to [0, 1] (integer arrays are "
                         f"divided by 255), got values in [{low:g}, {high:g}]")
    return ds
