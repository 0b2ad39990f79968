"""SegmentationJSMA on a small U-Net: its properties (bounds, budget, region, the caller's inputs and
model left as they were), batched equals one by one, bad input named, and the command line end to
end (train a segmenter, attack it)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from salmap import models
from salmap.attacks import SegmentationJSMA
from salmap.attacks.jsma_seg import outside, predict_masks
from salmap.data.base import Dataset
from salmap.data.registry import register_builtin

torch.set_num_threads(1)


def small_unet(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return models.build("unet", in_channels=1, num_classes=classes, base=4, depth=2).eval()


def flipped_targets(model: nn.Module, x: Tensor) -> Tensor:
    pred = predict_masks(model, x)
    target = pred.clone()
    target[:, 4:8, 4:8] = 1 - target[:, 4:8, 4:8].clamp(max=1)
    return target


@pytest.mark.parametrize("map_", ["jsma", "masked"])
def test_properties_bounds_budget_region_inputs_model(map_: str) -> None:
    model = small_unet(1)
    model.train()  # the attack must evaluate in eval mode and give the mode back
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    model.eval()
    target = flipped_targets(model, x)
    model.train()
    x_copy, target_copy = x.clone(), target.clone()
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[:, :10] = True
    attack = SegmentationJSMA(model, gamma=0.05, theta=0.7, map=map_, k=2, region=region, bounds=(0.0, 1.0))
    result = attack(x, target=target)
    assert torch.equal(x, x_copy) and torch.equal(target, target_copy)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.l0 <= math.floor(0.05 * 256)).all()
    changed = (result.x_adv != x)[:, 0]
    assert not changed[:, ~region].any()
    assert changed.any()
    assert result.pred_before.shape == (3, 16, 16) and result.pred_after.shape == (3, 16, 16)
    torch.testing.assert_close(result.success, result.extra["pixel_accuracy"] >= 0.99)


@pytest.mark.parametrize("classes", [1, 4])
def test_batched_equals_one_by_one(classes: int) -> None:
    model = small_unet(classes)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    target = flipped_targets(model, x)
    attack = SegmentationJSMA(model, gamma=0.04, k=2, region=outside())
    batched = attack(x, target=target)
    for i in range(3):
        single = attack(x[i : i + 1], target=target[i : i + 1])
        torch.testing.assert_close(single.x_adv[0], batched.x_adv[i])
        assert int(single.iterations[0]) == int(batched.iterations[i])
        assert bool(single.success[0]) == bool(batched.success[i])


def test_bad_input_is_named() -> None:
    model = small_unet(1)
    x = torch.rand(2, 1, 16, 16)
    good = torch.zeros(2, 16, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target must be class-index masks of the model's output size \(2, 16, 16\)"):
        SegmentationJSMA(model)(x, target=torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must hold classes in \[0, 1\].*got values in \[0, 2\]"):
        SegmentationJSMA(model)(x, target=good + 2 * (torch.arange(16) == 3))
    with pytest.raises(ValueError, match="integer tensor"):
        SegmentationJSMA(model)(x, target=good.float())
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"required must be in \(0.0, 1.0\], got {bad}"):
            SegmentationJSMA(model, required=bad)
    with pytest.raises(ValueError, match=r"region must be a mask of shape"):
        SegmentationJSMA(model, region=torch.ones(15, 16, dtype=torch.bool))(x, target=good)
    with pytest.raises(ValueError, match="map must be one of"):
        SegmentationJSMA(model, map="other")
    with pytest.raises(ValueError, match="gamma must be in"):
        SegmentationJSMA(model, gamma=0.0)
    with pytest.raises(ValueError, match="theta must be in"):
        SegmentationJSMA(model, theta=-1.0)
    with pytest.raises(ValueError, match="targeted only"):
        SegmentationJSMA(model)(x, y=good)
    with pytest.raises(ValueError, match=r"\(B, classes, H, W\)"):
        SegmentationJSMA(nn.Flatten())(x, target=good)


@register_builtin("test-squares-seg")
def _squares(split: str = "test") -> Dataset:
    """A tiny segmentation set for the CLI test: bright squares (class 1) on faint noise."""
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 48 if split == "train" else 4
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.2
    y = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, 10, (2,), generator=gen))
        x[i, 0, r : r + 6, c : c + 6] = 0.9
        y[i, r : r + 6, c : c + 6] = 1
    return Dataset(x, y, ["background", "square"], "test-squares-seg", task="segmentation")


def test_cli_train_and_attack_end_to_end(tmp_path, capsys) -> None:
    from salmap.cli import main

    ckpt = tmp_path / "unet"
    assert main(["train", "--task", "segmentation", "--data", "test-squares-seg", "--epochs", "3",
                 "--batch-size", "8", "--lr", "0.01", "--out", str(ckpt)]) == 0
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["task"] == "segmentation" and meta["arch"]["kwargs"]["num_classes"] == 1
    assert "test mean IoU" in capsys.readouterr().out
    out = tmp_path / "attack"
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "hide", "-n", "3", "--gamma", "0.2",
                 "--required", "0.95", "--k", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == "test-squares-seg" and len(results["samples"]) == 3
    for row in results["samples"]:
        assert row["success"] == (row["pixel_accuracy"] >= 0.95)
        assert row["l0_percent"] <= 20.0 + 1e-9
    assert (out / "grid.png").stat().st_size > 0
    assert "pixel_accuracy" in capsys.readouterr().out
    assert "local=None" in results["settings"]
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "hide", "-n", "2", "--gamma", "0.05",
                 "--global-domain", "--out", str(out), "--overwrite"]) == 0
    assert "local=False" in json.loads((out / "results.json").read_text())["settings"]
    capsys.readouterr()
    assert main(["attack", "jsma-seg", "--model", str(ckpt), "--goal", "relabel", "-n", "2", "--out", str(out)]) == 2
    assert "at least 3 classes" in capsys.readouterr().err
