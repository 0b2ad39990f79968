"""The dataset type every loader returns, the stratified split the loaders share, and the class
names of image folders."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


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


def no_samples(name: str, split: str) -> ValueError:
    """The error for a dataset split that holds no sample, naming the dataset and the split."""
    what = f"{split} images" if split in ("train", "test") else "images (train and test)"
    return ValueError(f"dataset {name!r} has no {what}: split {split!r} must hold at least one sample")


def take_split(x: Tensor, y: Tensor, split: str, train_idx: Tensor, test_idx: Tensor) -> tuple[Tensor, Tensor]:
    if split == "all":
        return x, y
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]


def class_names_of(*folders: Path) -> list[str]:
    """The class names of image folders: the sorted union of their sub-folders' names (a folder's
    ``train/`` and ``test/`` labelled alike, whichever classes each holds)."""
    return sorted({p.name for folder in folders for p in folder.iterdir() if p.is_dir()})


#: the image files a folder data set reads: what Pillow decodes reliably (a GIF's first frame, a
#: TIFF's first page; 16-bit PNG and TIFF scaled from 0..65535)
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def class_images(folder: Path) -> list[Path]:
    """The image files of one class folder, sorted; a ``ValueError`` naming the folder and the kinds
    read when it holds none (a folder of other files would otherwise be a silent empty class)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        kinds = sorted({p.suffix.lower() or p.name for p in files})
        held = f"holds only {', '.join(kinds[:6])} files" if kinds else "holds no files"
        raise ValueError(f"class folder {folder} {held}, no image salmap reads ({', '.join(IMAGE_SUFFIXES)})")
    return found
