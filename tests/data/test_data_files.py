"""Data files whose pixel values are not images in [0, 1]: the error says what was found."""

from __future__ import annotations

import numpy as np
import pytest
from _evaluate_support import npz_of

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


@pytest.mark.parametrize("train, test, split, message", [
    (0, None, "test", "has no test images"),       # x and y hold no sample at all
    (0, None, "train", "has no train images"),
    (0, None, "all", "has no images (train and test)"),
    (20, 0, "test", "has no test images"),         # an empty x_test / y_test
    (0, 20, "train", "has no train images"),       # x_test but an empty x
], ids=["empty-test", "empty-train", "empty-all", "empty-x_test", "empty-x"])
def test_a_split_with_no_samples_is_named(tmp_path, train, test, split, message):
    name = npz_of(tmp_path / "d.npz", train, test)
    with pytest.raises(ValueError) as info:
        data.load_dataset(name, split)
    assert str(info.value) == f"dataset {name!r} {message}: split {split!r} must hold at least one sample"
    if train or test:  # the other split is loaded as before
        assert len(data.load_dataset(name, "test" if split == "train" else "train")) == 20


def test_an_empty_split_of_a_streamed_folder_is_named(tmp_path):
    """One image per class: the test split takes each class's only image, the train split is empty."""
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("L", (6, 6), 40).save(tmp_path / name / "0.png")
    assert len(data.load_dataset(f"folder:{tmp_path}", "test")) == 2
    with pytest.raises(ValueError, match=r"dataset 'folder:.*' has no train images: split 'train' must hold"):
        data.load_dataset(f"folder:{tmp_path}", "train")
