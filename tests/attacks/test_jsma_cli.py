"""``salmap attack jsma`` end to end: a zoo checkpoint, and a TorchScript model attacked towards every
other class (the source-target grid and its figures)."""

from __future__ import annotations

import json
import math

import pytest
import torch


def test_cli_end_to_end(tmp_path):
    from salmap import models
    from salmap.cli import main

    torch.manual_seed(0)
    model = models.build("lenet")
    models.save(model, tmp_path / "model", {"input_shape": [1, 28, 28], "bounds": [0.0, 1.0]})
    out = tmp_path / "out"
    code = main(["attack", "jsma", "--model", str(tmp_path / "model"), "-n", "3", "--targeted", "random",
                 "--gamma", "0.02", "--candidates", "64", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["attack"] == "jsma" and len(report["samples"]) == 3
    assert all(s["l0"] <= math.floor(0.02 * 784) for s in report["samples"])
    assert "candidates=64" in report["settings"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_source_target_grid(tmp_path, digits_model):
    from salmap.cli import main

    model, x, _ = digits_model
    torch.jit.trace(model, x[:1]).save(str(tmp_path / "model.pt"))  # TorchScript: any architecture
    out = tmp_path / "grid"
    code = main(["attack", "jsma", "--model", str(tmp_path / "model.pt"), "--data", "digits", "-n", "30",
                 "--targeted", "all", "--gamma", "0.3", "--saturation", "0", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["samples"]
    assert len(rows) == 30 * 9 and "saturation=0.0" in report["settings"]
    for index in range(30):  # each image attacked towards each other class once
        mine = [r for r in rows if r["index"] == index]
        assert sorted(r["target"] for r in mine) == sorted(set(range(10)) - {mine[0]["label"]})
    success = report["pairs"]["success"]
    for s in range(10):
        assert success[s][s] is None
        for t in set(range(10)) - {s}:
            pair = [r["success"] for r in rows if r["label"] == s and r["target"] == t]
            assert success[s][t] == (pytest.approx(sum(pair) / len(pair)) if pair else None)
    for name in ("pairs.png", "source-target.png", "grid.png"):
        assert (out / name).stat().st_size > 1000
