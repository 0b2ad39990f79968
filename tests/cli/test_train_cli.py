"""``salmap train --image-size N``: a folder of photographs of mixed sizes, as the data layer's
error asks for (``pass image_size (--image-size N)``)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from salmap import models
from salmap.cli import main


def test_train_on_a_folder_of_mixed_sizes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (20 + 3 * i, 18 + 2 * c, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    argv = ["train", "--data", f"folder:{tmp_path / 'imgs'}", "--epochs", "1", "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "pass image_size (--image-size N)" in capsys.readouterr().err
    assert main([*argv, "--image-size", "16"]) == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["input_shape"] == [3, 16, 16] and meta["training"]["image_size"] == 16
    assert models.load(tmp_path / "m")(torch.rand(2, 3, 16, 16)).shape == (2, 2)
    assert main(["train", "--task", "segmentation", "--image-size", "16", "--out", str(tmp_path / "s")]) == 2
    assert "--image-size applies to classification images" in capsys.readouterr().err
