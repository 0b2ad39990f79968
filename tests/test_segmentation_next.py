"""Segmentation goal "add": the objects of the next selected sample (wrapping), the same in
``salmap attack jsma-seg`` and ``salmap evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _evaluate_support import write_run
from torch import nn

from salmap.cli import main
from salmap.data import Dataset
from salmap.data.registry import register_builtin
from salmap.evaluation.store import read_results
from salmap.targets import segmentation_goal


@register_builtin("test-corner-squares")
def _corners(split: str = "test") -> Dataset:
    """Four images, each with one bright square of its own size in a different corner."""
    x = torch.full((4, 1, 12, 12), 0.1)
    y = torch.zeros(4, 12, 12, dtype=torch.long)
    for i, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        x[i, 0, r : r + 1 + i, c : c + 1 + i] = 0.9
        y[i, r : r + 1 + i, c : c + 1 + i] = 1
    return Dataset(x, y, ["background", "square"], "test-corner-squares", task="segmentation")


class Threshold(nn.Module):
    """A binary segmenter: logit 10 * (x - 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * (x - 0.5)


def _expected_accuracy_before(n: int) -> list[float]:
    ds = _corners()
    pred = ds.y[:n]
    goal = segmentation_goal("add", pred, pred[(torch.arange(n) + 1) % n])
    return (goal == pred).flatten(1).float().mean(dim=1).tolist()


def test_add_uses_the_next_selected_sample_in_attack_and_evaluate(tmp_path: Path) -> None:
    model = tmp_path / "threshold.pt"
    torch.jit.script(Threshold()).save(str(model))
    expected = _expected_accuracy_before(3)
    previous = segmentation_goal("add", _corners().y[:3], _corners().y[:3].roll(1, 0))
    assert expected != (previous == _corners().y[:3]).flatten(1).float().mean(dim=1).tolist()  # the test can tell

    out = tmp_path / "attack"
    assert main(["attack", "jsma-seg", "--model", str(model), "--data", "test-corner-squares", "--goal", "add",
                 "-n", "3", "--gamma", "0.02", "--candidates", "10", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["samples"]
    assert [r["pixel_accuracy_before"] for r in rows] == expected

    run = write_run(tmp_path / "run.yaml", output="eval", batch_size=2,
                    data={"name": "test-corner-squares", "num": 3, "select": "first"},
                    models=[{"path": str(model)}], figures=False, report=False,
                    attacks=[{"attack": "jsma-seg", "targets": "add",
                              "params": {"gamma": 0.02, "candidates": 10, "max_iterations": 1}}])
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert [r["pixel_accuracy_before"] for r in read_results(tmp_path / "eval")] == expected
