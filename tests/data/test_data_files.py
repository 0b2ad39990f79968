"""Data files whose pixel values are not images in [0, 1]: the error says what was found."""

from __future__ import annotations

import numpy as np
import pytest

from salmap import data


@pytest.mark.parametrize("x, found", [
    (np.full((4, 1, 8, 8), 0.5, np.float32) * np.array([1, 1, np.nan, 1], np.float32)[:, None, None, None],
     "got 64 NaN/inf values"),
    (np.linspace(-1, 255, 4 * 64, dtype=np.float32).reshape(4, 1, 8, 8), "got values in [-1, 255]"),
], ids=["nan", "float-0-255"])
def test_npz_pixels_out_of_range_name_what_was_found(tmp_path, x, found):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4) % 2, x_test=x, y_test=np.arange(4) % 2)
    with pytest.raises(ValueError, match="images must be finite and scale to") as info:
        data.load(f"npz:{tmp_path / 'd.npz'}", split="test")
    assert found in str(info.value)
