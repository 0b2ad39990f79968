"""Data with no sample in the split a command reads: every command refuses it in one line naming
the data and the split (exit 2), never a raw RuntimeError / IndexError / KeyError from deep inside."""

from __future__ import annotations

import pytest
from _evaluate_support import npz_of
from conftest import error_line

from salmap.cli import main

COMMANDS = {
    "attack": ["attack", "fgsm", "--model", "{lenet}", "-n", "20"],
    "explain": ["explain", "--model", "{lenet}", "-n", "2"],
    "explain-attack": ["explain", "--model", "{lenet}", "-n", "2", "--attack", "fgsm"],
    "evaluate": ["evaluate", "--model", "{lenet}", "--attack", "fgsm", "-n", "2"],
    "train": ["train", "--model", "lenet", "--epochs", "1"],
}


@pytest.mark.parametrize("train, test", [(0, None), (20, 0)], ids=["no-samples", "empty-x_test"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_empty_test_split_is_one_line_naming_the_data(tmp_path, lenet28, capsys, command, train, test):
    data = npz_of(tmp_path / "d.npz", train, test)
    argv = [a.format(lenet=lenet28) for a in COMMANDS[command]] + ["--data", data, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = error_line(capsys, argv[0])
    what = "train" if command == "train" and not train else "test"
    assert f"dataset {data!r} has no {what} images: split {what!r} must hold at least one sample" in line
    assert not (tmp_path / "o").exists()


def test_empty_train_split_leaves_the_test_split_usable(tmp_path, lenet28, capsys):
    data = npz_of(tmp_path / "d.npz", 0, 3)
    assert main(["attack", "fgsm", "--model", lenet28, "--data", data, "--split", "train", "--out",
                 str(tmp_path / "o")]) == 2
    assert "has no train images" in error_line(capsys, "attack")
    assert main(["attack", "fgsm", "--model", lenet28, "--data", data, "-n", "3", "--out", str(tmp_path / "o")]) == 0
