"""``--image-size`` is checked against the pixel limit before a batch of that size is allocated."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from salmap import data
from salmap.data import limits


@pytest.fixture
def sources(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (10, 12)).save(tmp_path / "imgs" / "a" / "0.png")
    x = np.zeros((2, 1, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(2), x_test=x, y_test=np.arange(2))
    return [f"folder:{tmp_path / 'imgs'}", f"npz:{tmp_path / 'd.npz'}"]


def test_image_size_above_the_pixel_limit_is_refused(sources, monkeypatch):
    for name in sources:
        with pytest.raises(ValueError, match=r"image_size \(--image-size\) must be at most 8192 .* got 100000"):
            data.load_dataset(name, "all", image_size=100_000)  # 120 GB for one 3x100000x100000 batch of one
        monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 15 * 15)  # the limit can be changed for trusted data
        with pytest.raises(ValueError, match="must be at most 15"):
            data.load_dataset(name, "all", image_size=16)
        assert data.load_dataset(name, "all", image_size=15).x[0:1].shape[-2:] == (15, 15)
        monkeypatch.undo()
