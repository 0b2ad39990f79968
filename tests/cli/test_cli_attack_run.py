"""``salmap attack`` runs through the evaluation pipeline: it refuses a folder holding something
else, resumes, saves every adversarial example and writes schema_version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _evaluate_support import save_lenet

from salmap import models
from salmap.attacks import FGSM
from salmap.cli import main
from salmap.data import load_dataset
from salmap.evaluation import load_adversarial


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lenet(tmp_path_factory.mktemp("model") / "lenet")


def test_attack_refuses_a_non_empty_folder_resumes_and_saves_examples(tmp_path: Path, lenet: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["attack", "fgsm", "--model", str(lenet), "-n", "5", "--batch-size", "2", "--eps", "0.2", "--out", str(out)]
    assert main(args) != 0
    assert "not empty and holds no salmap run" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--save-adv"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    record = json.loads((out / "results.json").read_text())
    assert record["schema_version"] == 2 and len(record["samples"]) == 5
    summary = record["summary"]
    assert summary["l2"] == pytest.approx(summary["l2_mean"])  # the earlier key, the mean over all samples
    assert "l2_mean_success" in summary and "clean_accuracy" in summary
    capsys.readouterr()

    assert main([*args, "--save-adv"]) == 0  # the same run again: every batch resumed, nothing recomputed
    assert "3 batches resumed" in capsys.readouterr().out
    ds = load_dataset("mnist-sample", "test")
    x_adv = load_adversarial(out)[("lenet", "fgsm")]["x_adv"]
    attack = FGSM(models.load(lenet), eps=0.2)
    by_hand = torch.cat([attack(ds.x[i : min(i + 2, 5)], y=ds.y[i : min(i + 2, 5)]).x_adv for i in range(0, 5, 2)])
    assert torch.equal(x_adv, by_hand)

    assert main([*args[:-2], "--eps", "0.1", "--out", str(out)]) != 0  # another run: refused
    assert "holds a different run" in capsys.readouterr().err
