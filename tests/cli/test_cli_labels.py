"""Labels past a classifier's outputs, and explain's --target past them, fail before any work
(one line, exit 2, no output folder), naming the data and the model's class count."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import error_line as _error_line

from salmap.cli import main


@pytest.mark.parametrize("argv, message", [
    (["attack", "fgsm"], "--data npz:{tmp}/d.npz has labels up to 12 but the model has 10 outputs (classes 0 to 9)"),
    (["explain", "--attack", "fgsm"], "has labels up to 12 but the model has 10 outputs"),
    (["explain", "--target", "label"], "has labels up to 12 but the model has 10 outputs"),
    (["explain", "--target", "10"], "--target must be pred, label or a class index in [0, 9] (the model has 10 "
     "outputs), got 10"),
], ids=["cli-attack-labels-past-outputs", "cli-explain-attack-labels", "cli-explain-label-targets",
        "cli-explain-target-past-outputs"])
def test_cli_labels_and_targets_past_the_outputs_fail_before_work(tmp_path, lenet28, capsys, argv, message):
    x = np.zeros((3, 28, 28), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 12, 3]), x_test=x, y_test=np.array([0, 12, 3]))
    out = tmp_path / "o"
    assert main([*argv, "--model", lenet28, "--data", f"npz:{tmp_path}/d.npz", "--out", str(out)]) == 2
    assert message.format(tmp=tmp_path) in _error_line(capsys, argv[0])
    assert not out.exists()


def test_cli_explain_without_labels_needs_none_in_range(tmp_path, lenet28, capsys):
    x = np.zeros((3, 28, 28), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 12, 3]), x_test=x, y_test=np.array([0, 12, 3]))
    argv = ["explain", "--model", lenet28, "--data", f"npz:{tmp_path}/d.npz", "--out", str(tmp_path / "o")]
    assert main(argv) == 0  # maps of the predicted class: the labels are not used
