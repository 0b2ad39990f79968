"""Datasets: the embedded MNIST sample, scikit-learn digits, IDX, npz, image folders,
and segmentation sets derived from real digits.

``load(name, split)`` returns ``(x, y)``; ``load_dataset`` returns a :class:`Dataset`
with class names.
"""

from salmap.data.base import Dataset
from salmap.data.loading import available, load, load_dataset

__all__ = ["Dataset", "available", "load", "load_dataset"]
