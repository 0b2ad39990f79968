"""A module:factory model (``--allow-code``) whose call fails is reported before the output
folder is claimed: the corrected command then runs without ``--overwrite``."""

from __future__ import annotations

import sys

import numpy as np

from salmap.cli import main

FACTORY = """
import torch.nn as nn

def make(width=4):
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 3)).eval()
"""


def test_a_failing_factory_leaves_no_claimed_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "hunt_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4) % 3, x_test=x, y_test=np.arange(4) % 3)
    out = tmp_path / "o"
    argv = ["evaluate", "--allow-code", "--model", "hunt_factory:make", "--attack", "fgsm", "-n", "2",
            "--data", f"npz:{tmp_path / 'd.npz'}", "--out", str(out)]
    try:
        assert main([*argv, "--model-arg", "width=-1"]) == 2
        assert "models[0].path: " in capsys.readouterr().err
        assert not out.exists()
        assert main([*argv, "--model-arg", "width=5"]) == 0  # no --overwrite needed
    finally:
        sys.modules.pop("hunt_factory", None)
    assert (out / "summary.json").is_file()


def test_a_value_the_constructor_refuses_fails_before_the_folder_is_claimed(tmp_path, capsys):
    """JSMA's theta=0 passes the registry's checks but not the constructor's: found before any work,
    from the command line and from salmap attack alike."""
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4) % 3, x_test=x, y_test=np.arange(4) % 3)
    import torch
    from torch import nn

    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()), str(tmp_path / "m.pt"))
    data = ["--data", f"npz:{tmp_path / 'd.npz'}", "--model", str(tmp_path / "m.pt")]
    assert main(["evaluate", *data, "--attack", "jsma:theta=0", "-n", "2", "--out", str(tmp_path / "e")]) == 2
    assert main(["attack", "jsma", *data, "--theta", "0", "-n", "2", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.count("theta must be non-zero") == 2
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()
