"""The command line end to end: train for one short epoch, then attack the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from salmap.cli import main


@pytest.mark.slow
def test_train_then_attack_fgsm(tmp_path, capsys):
    ck = tmp_path / "lenet"
    assert main(["train", "--data", "digits", "--model", "lenet", "--epochs", "1", "--out", str(ck)]) == 2
    assert "input_size must be between 16x16" in capsys.readouterr().err

    # two epochs: one (about 80-88% depending on threads and test order) is too close to the bar
    assert main(["train", "--data", "mnist-sample", "--model", "lenet", "--epochs", "2", "--out", str(ck)]) == 0
    meta = json.loads((ck / "model.json").read_text())
    assert meta["arch"]["kwargs"]["input_size"] == [28, 28] and meta["metrics"]["test_accuracy"] > 0.8
    assert "checkpoint written to" in capsys.readouterr().out

    out = tmp_path / "fgsm"
    code = main(["attack", "fgsm", "--model", str(ck), "-n", "20", "--eps", "0.2",
                 "--batch-size", "8", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["samples"] == 20 and len(results["samples"]) == 20
    assert all(s["linf"] <= 0.2 + 1e-6 for s in results["samples"])
    assert (out / "grid.png").stat().st_size > 1000

    code = main(["attack", "pgd", "--model", str(ck), "-n", "6", "--eps", "0.1",
                 "--steps", "3", "--targeted", "random", "--out", str(tmp_path / "pgd")])
    assert code == 0
    rows = json.loads((tmp_path / "pgd" / "results.json").read_text())["samples"]
    assert all(r["target"] != r["label"] for r in rows)


def test_cli_errors_name_the_argument(tmp_path, capsys):
    assert main(["attack", "fgsm", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--data", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "--data must be a dataset name or kind:PATH, one of" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("demo", "train", "attack"):
        assert cmd in text


def test_train_is_reproducible_from_its_seed(tmp_path):
    """The initial weights come from --seed too: two runs give the same checkpoint."""
    import numpy as np
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    data = tmp_path / "small.npz"
    np.savez(data, x=rng.random((96, 1, 28, 28), dtype=np.float32), y=np.arange(96) % 10,
             x_test=rng.random((20, 1, 28, 28), dtype=np.float32), y_test=np.arange(20) % 10)
    folders = []
    for run in range(2):
        folder = tmp_path / f"run{run}"
        torch.manual_seed(run)  # whatever the global generator holds before the run
        assert main(["train", "--data", f"npz:{data}", "--model", "lenet", "--epochs", "1", "--seed", "3",
                     "--out", str(folder), "--device", "cpu"]) == 0
        folders.append(load_file(str(folder / "weights.safetensors")))
    assert folders[0].keys() == folders[1].keys()
    assert all(bool((folders[0][k] == folders[1][k]).all()) for k in folders[0])
