"""The dataset type every loader returns, and the registry of dataset names."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from salmap._validate import check_choice

SPLITS = ("train", "test", "all")


@dataclass
class Dataset:
    """Images ``x`` (float ``(N, C, H, W)`` in ``[0, 1]``) and labels ``y``.

    ``y`` is ``(N,)`` class indices for classification and ``(N, H, W)`` class-index masks
    for segmentation (``task == "segmentation"``).
    """

    x: Tensor
    y: Tensor
    class_names: list[str]
    name: str
    task: str = "classification"
    info: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, indices: Any) -> Dataset:
        """The samples at ``indices`` (positions or a slice), in that order."""
        return Dataset(self.x[indices], self.y[indices], self.class_names, self.name, self.task, self.info)

    def digest(self) -> str:
        """A short hash of the samples and labels (a streamed set hashes its files instead)."""
        return hashlib.sha256(self.x.numpy().tobytes() + self.y.numpy().tobytes()).hexdigest()[:16]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, y)`` batches in order; a streamed set decodes one batch at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield self.x[sl], self.y[sl]

    def subset(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None:
            return self
        if n > len(self):
            raise ValueError(f"n must be at most the dataset size {len(self)} for {self.name}, got {n}")
        return Dataset(self.x[:n], self.y[:n], self.class_names, self.name, self.task, self.info)


Loader = Callable[[str, str], Dataset]
_BUILTIN: dict[str, Callable[[str], Dataset]] = {}
_PREFIXED: dict[str, Loader] = {}


def register_builtin(name: str) -> Callable[[Callable[[str], Dataset]], Callable[[str], Dataset]]:
    """Register a dataset that needs no path: ``loader(split) -> Dataset``."""

    def deco(fn: Callable[[str], Dataset]) -> Callable[[str], Dataset]:
        _BUILTIN[name] = fn
        return fn

    return deco


def register_prefix(prefix: str) -> Callable[[Loader], Loader]:
    """Register a file-backed dataset kind ``prefix:PATH``: ``loader(path, split) -> Dataset``."""

    def deco(fn: Loader) -> Loader:
        _PREFIXED[prefix] = fn
        return fn

    return deco


def load_dataset(name: str, split: str = "test", image_size: int | None = None, channels: int | None = None) -> Dataset:
    """Load a dataset by name: a built-in (``mnist-sample``, ``digits``, ``mnist-seg``, ...)
    or ``kind:PATH`` (``idx:``, ``npz:``, ``folder:``).

    ``folder:PATH`` is streamed (images decoded per batch, :mod:`salmap.data.stream`).
    ``image_size`` (resize the shorter side, centre-crop to a square) and ``channels``
    (1 grey, 3 RGB: the model's) apply to every kind: a folder applies them as it decodes,
    other sets once after loading.
    """
    from salmap.data import files, mnist_seg, packaged, stream  # noqa: F401  (registration; stream's folder: wins)

    check_choice("split", split, SPLITS)
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"image_size (--image-size) must be a positive integer, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if name.startswith("folder:") and name.partition(":")[2]:
        return stream.stream_folder(name.partition(":")[2], split, image_size=image_size, channels=channels)
    ds = _load_named(name, split)
    if image_size is None and channels is None:
        return ds
    return _transformed(ds, image_size, channels)


def _transformed(ds: Dataset, image_size: int | None, channels: int | None) -> Dataset:
    from salmap.data.stream import resize_crop

    if ds.task != "classification" and image_size is not None:
        raise ValueError(f"image_size applies to classification images; {ds.name} is a {ds.task} set")
    x = ds.x
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 1 and x.shape[1] == 3:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    if image_size is not None:
        x = torch.stack([resize_crop(xi, image_size) for xi in x]) if len(x) else x
    return Dataset(x.contiguous(), ds.y, ds.class_names, ds.name, ds.task, ds.info)


def _load_named(name: str, split: str) -> Dataset:
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    prefix, sep, path = name.partition(":")
    if sep and prefix in _PREFIXED:
        if not path:
            raise ValueError(f"dataset {name!r} needs a path after '{prefix}:'")
        return _PREFIXED[prefix](path, split)
    if name in _BUILTIN:
        return _BUILTIN[name](split)
    known = sorted(_BUILTIN) + [f"{p}:PATH" for p in sorted(_PREFIXED)]
    close = difflib.get_close_matches(name, list(_BUILTIN), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"dataset must be one of {known}, got {name!r}{hint}")


def load(name: str, split: str = "test") -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors of a dataset (a streamed folder decoded whole); see :func:`load_dataset`."""
    ds = load_dataset(name, split)
    return (ds.x if isinstance(ds.x, Tensor) else ds.x[:]), ds.y


def available() -> list[str]:
    """Names of the built-in datasets and the ``kind:PATH`` forms."""
    from salmap.data import files, mnist_seg, packaged  # noqa: F401

    return sorted(_BUILTIN) + [f"{p}:PATH" for p in sorted(_PREFIXED)]


def split_per_class(y: Tensor, test_per_class: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A fixed, stratified split: ``test_per_class`` seeded random rows of each class go to test.

    Returns ``(train_index, test_index)``, each sorted.
    """
    gen = torch.Generator().manual_seed(seed)
    test = []
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        pick = rows[torch.randperm(rows.numel(), generator=gen)[:test_per_class]]
        test.append(pick)
    test_idx = torch.cat(test).sort().values
    mask = torch.ones(y.shape[0], dtype=torch.bool)
    mask[test_idx] = False
    return torch.nonzero(mask).flatten(), test_idx


def take_split(x: Tensor, y: Tensor, split: str, train_idx: Tensor, test_idx: Tensor) -> tuple[Tensor, Tensor]:
    if split == "all":
        return x, y
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]
