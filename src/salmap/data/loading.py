"""Loading a dataset by name: ``load_dataset``, ``load`` and ``available``.

Importing this module imports every loader, and each loader registers its names
(:mod:`salmap.data.registry`) as it is imported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from salmap._validate import check_choice
from salmap.data import files, limits, mnist_seg, packaged, stream  # noqa: F401  (registration on import)
from salmap.data.base import Dataset, no_samples
from salmap.data.registry import load_registered, path_problem, registered

SPLITS = ("train", "test", "all")


def load_dataset(name: str, split: str = "test", image_size: int | None = None, channels: int | None = None) -> Dataset:
    """Load a dataset by name: a built-in (``mnist-sample``, ``digits``, ``mnist-seg``, ...)
    or ``kind:PATH`` (``idx:``, ``npz:``, ``folder:``).

    ``folder:PATH`` is streamed (images decoded per batch, :mod:`salmap.data.stream`).
    ``image_size`` (resize the shorter side, centre-crop to a square) and ``channels``
    (1 grey, 3 RGB: the model's) apply to every kind: a folder applies them as it decodes,
    other sets once after loading. A split that holds no sample is refused (``ValueError``
    naming the dataset and the split), whatever command or kind of data asked for it.
    """
    check_choice("split", split, SPLITS)
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    limits.check_image_size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if problem := path_problem(name):  # a missing folder: named with the dataset, before any reading
        raise ValueError(f"dataset {name!r}: {problem}")
    if name.startswith("folder:") and name.partition(":")[2]:
        streamed = stream.stream_folder(name.partition(":")[2], split, image_size=image_size, channels=channels)
        return _not_empty(streamed, name, split)
    ds = _not_empty(load_registered(name, split), name, split)
    if image_size is None and channels is None:
        return ds
    return _transformed(ds, image_size, channels)


def _not_empty(ds: Dataset, name: str, split: str) -> Dataset:
    """``ds`` when it holds a sample; else a ``ValueError`` naming the dataset and the split (an
    empty split would fail later inside a command, with nothing to say which data was empty)."""
    if len(ds) == 0:
        raise no_samples(name, split)
    return ds


def _transformed(ds: Dataset, image_size: int | None, channels: int | None) -> Dataset:
    if ds.task != "classification" and image_size is not None:
        raise ValueError(f"image_size applies to classification images; {ds.name} is a {ds.task} set")
    x = ds.x
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 1 and x.shape[1] == 3:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    if image_size is not None:
        x = torch.stack([stream.resize_crop(xi, image_size) for xi in x]) if len(x) else x
    return Dataset(x.contiguous(), ds.y, ds.class_names, ds.name, ds.task, ds.info)


def load(name: str, split: str = "test") -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors of a dataset (a streamed folder decoded whole); see :func:`load_dataset`."""
    ds = load_dataset(name, split)
    return (ds.x if isinstance(ds.x, Tensor) else ds.x[:]), ds.y


def available() -> list[str]:
    """Names of the built-in datasets and the ``kind:PATH`` forms."""
    return registered()
