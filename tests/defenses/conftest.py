"""Fixtures the defense tests share."""

from __future__ import annotations

import pytest

from salmap import data


@pytest.fixture(scope="module")
def digits() -> tuple[data.Dataset, data.Dataset]:
    """scikit-learn's 8x8 digits: (train, test)."""
    return data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
