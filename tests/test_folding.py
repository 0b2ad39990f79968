"""Occlusion's tracing leaves a model that holds a TorchScript module as it is: a normalised
TorchScript model (``Normalized(torch.jit.load(...))``, ``--mean/--std`` on a TorchScript file)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from salmap.cli import main
from salmap.explain import Occlusion
from salmap.folding import trace
from salmap.models import Normalized

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3)).eval()


def test_occlusion_of_a_normalised_torchscript_model():
    net = _net()
    wrapped = Normalized(torch.jit.script(net), MEAN, STD)
    assert trace(wrapped, fold=True, always=True) is None  # run as it is, not traced
    x = torch.rand(2, 3, 8, 8)
    heat = Occlusion(wrapped, patch=4, stride=2).attribute(x, target=1)
    eager = Occlusion(Normalized(net, MEAN, STD), patch=4, stride=2, fold_batchnorm=False).attribute(x, target=1)
    torch.testing.assert_close(heat, eager, atol=1e-5, rtol=1e-5)


def test_cli_occlusion_of_a_torchscript_file_with_mean_and_std(tmp_path, capsys):
    torch.jit.save(torch.jit.script(_net()), str(tmp_path / "net.pt"))
    x = np.random.default_rng(0).random((3, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(3), x_test=x, y_test=np.arange(3))
    rc = main(["explain", "--method", "occlusion", "--patch", "4", "--model", str(tmp_path / "net.pt"),
               "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
               "--data", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "explain.png").is_file()
