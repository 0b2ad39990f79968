"""Data loaders: built-in sets, IDX (plain and gzipped), npz and image folders, and bad files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from salmap import data


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_idx_folder(folder, compress=False, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 5, 7)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 3, compress)


def test_mnist_sample_split_is_fixed_and_balanced():
    xtr, ytr = data.load("mnist-sample", "train")
    xte, yte = data.load("mnist-sample", "test")
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 400))
    assert torch.equal(torch.bincount(yte), torch.full((10,), 100))
    assert float(xtr.min()) >= 0 and float(xtr.max()) <= 1
    xall, _ = data.load("mnist-sample", "all")
    assert xall.shape[0] == 5000
    # Shuffled within the split: the first 100 test images cover every class.
    assert len(torch.unique(yte[:100])) == 10
    # The split is disjoint: no test image is also a training image.
    train_keys = {bytes(row.numpy()) for row in (xtr.flatten(1) * 255).round().to(torch.uint8)}
    assert not any(bytes(row.numpy()) in train_keys for row in (xte.flatten(1) * 255).round().to(torch.uint8))
    ds = data.load_dataset("mnist-sample")
    assert ds.class_names == [str(i) for i in range(10)]


def test_digits():
    x, y = data.load("digits", "train")
    xt, yt = data.load("digits", "test")
    assert x.shape[1:] == (1, 8, 8) and x.shape[0] + xt.shape[0] == 1797
    assert float(x.max()) == 1.0


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder(tmp_path, compress):
    make_idx_folder(tmp_path / "idx", compress)
    ds = data.load_dataset(f"idx:{tmp_path / 'idx'}", "train")
    assert ds.x.shape == (12, 1, 5, 7) and ds.y.tolist() == [i % 3 for i in range(12)]
    assert data.load(f"idx:{tmp_path / 'idx'}", "all")[0].shape[0] == 18
    assert ds.class_names == ["0", "1", "2"]


def test_truncated_idx_names_the_file(tmp_path):
    make_idx_folder(tmp_path / "idx")
    bad = tmp_path / "idx" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte is truncated or corrupt"):
        data.load(f"idx:{tmp_path / 'idx'}", "test")


def test_idx_mismatched_counts(tmp_path):
    make_idx_folder(tmp_path / "idx")
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(ValueError, match="do not match"):
        data.load(f"idx:{tmp_path / 'idx'}", "test")


def test_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 256, (50, 6, 6, 3)).astype(np.uint8), y=np.arange(50) % 5)
    xtr, ytr = data.load(f"npz:{path}", "train")
    xte, yte = data.load(f"npz:{path}", "test")
    assert xtr.shape[1:] == (3, 6, 6) and xtr.shape[0] + xte.shape[0] == 50
    assert torch.equal(torch.bincount(yte), torch.full((5,), 2))
    np.savez(path, x=rng.random((4, 6, 6)), y=np.arange(3))
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        data.load(f"npz:{path}")
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=str(path)):
        data.load(f"npz:{path}")


def test_npz_refuses_pickled_arrays(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.arange(1))
    with pytest.raises(ValueError, match=str(path)):
        data.load(f"npz:{path}")


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    ds = data.load_dataset(f"folder:{root}", "all")
    assert ds.x.shape == (10, 3, 4, 4) and ds.class_names == ["cat", "dog"]
    (root / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.png"):
        data.load(f"folder:{root}")


def test_unknown_names():
    with pytest.raises(ValueError, match="did you mean mnist-sample"):
        data.load("mnist-sampel")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="the folder /nonexistent/folder does not exist"):
        data.load("idx:/nonexistent/folder")
