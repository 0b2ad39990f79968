"""``salmap train --image-size N``: a folder of photographs of mixed sizes, as the data layer's
error asks for (``pass image_size (--image-size N)``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_train_leaves_a_checkpoint_in_out_alone_unless_overwrite(tmp_path, capsys):
    """A folder already holding a checkpoint (the user's model.json and weights) is refused before any
    work; ``--overwrite`` replaces the checkpoint and keeps the folder's other files."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.json").write_text('{"my": "config"}')
    (out / "weights.safetensors").write_text("my weights")
    (out / "notes.txt").write_text("mine")
    argv = ["train", "--data", "digits", "--image-size", "16", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "already holds model.json and weights.safetensors" in err
    assert (out / "model.json").read_text() == '{"my": "config"}' and (out / "weights.safetensors").read_text() == "my weights"
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "model.json").read_text())["input_shape"] == [1, 16, 16]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("flags", "message"), [
    (["--model", "unet"], "--model must be one of ['lenet', 'resnet18', 'resnet34'] for --task classification, got 'unet'"),
    (["--model", "dae"], "--model must be one of ['lenet', 'resnet18', 'resnet34'] for --task classification, got 'dae'"),
    (["--task", "segmentation", "--model", "lenet"], "--model must be one of ['unet'] for --task segmentation, got 'lenet'"),
    (["--lr", "1e39"], "--lr must be at most 3.403e+38 (the largest float32), got 1e+39"),
], ids=["unet-classifier", "dae-classifier", "lenet-segmenter", "lr-past-float32"])
def test_train_refuses_a_model_the_task_cannot_train_and_an_lr_float32_cannot_hold(tmp_path, capsys, flags, message):
    assert main(["train", "--data", "digits", "--image-size", "16", *flags, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"salmap train: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_a_learning_rate_that_makes_the_loss_nan_stops_training_in_one_line(tmp_path, capsys):
    """``--lr 1e30`` trained to nan weights and wrote them as a checkpoint; now the first non-finite loss
    stops the run, named with its epoch and batch, before the step, and no folder is left."""
    assert main(["train", "--data", "digits", "--image-size", "16", "--lr", "1e30", "--epochs", "2",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("salmap train: error: train: the loss became nan at epoch 1, batch ")
    assert "lower the learning rate (lr=1e+30)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
