"""Data files whose pixel values are not images in [0, 1]: the error says what was found."""

from __future__ import annotations

import numpy as np
import pytest

from salmap import data
from salmap.data.files import load_folder


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


def test_train_and_test_folders_with_different_classes_share_one_labelling(tmp_path):
    """test/ without 'cat' but with 'emu': 'dog' is class 1 in both splits (it was 0 in test/)."""
    from PIL import Image

    for split, names in (("train", ("cat", "dog")), ("test", ("dog", "emu"))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (6, 6), (40 * len(name), 0, 0)).save(tmp_path / split / name / "0.png")
    for loaded in (lambda split: data.load_dataset(f"folder:{tmp_path}", split),  # streamed
                   lambda split: data.load_dataset(f"folder:{tmp_path}", split, image_size=4),
                   lambda split: load_folder(str(tmp_path), split)):
        assert loaded("train").y.tolist() == [0, 1] and loaded("test").y.tolist() == [1, 2]
        assert loaded("all").y.tolist() == [0, 1, 1, 2]
        assert loaded("test").class_names == ["cat", "dog", "emu"] == loaded("all").class_names
