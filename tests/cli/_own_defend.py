"""What the tests of ``salmap defend`` on someone's own model share (``test_defend_own_model``,
``test_defend_own_refusals``): a small CNN trained on normalised 8x8 digits, saved as a TorchScript file,
a module:factory, a pickled model and a zoo checkpoint (the ``own`` fixture), and the command's arguments."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from salmap import data, models
from salmap.models import Normalized
from salmap.training import train_classifier

MEAN, STD = 0.5, 0.3

FACTORY = '''
import torch
from safetensors.torch import load_file
from torch import nn


class Net(nn.Module):
    """torch.jit.script refuses the *unused argument, so salmap traces it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(8 * 16, 10))

    def forward(self, x, *unused):
        return self.body(x)


def net(weights):
    model = Net()
    model.body.load_state_dict(load_file(weights))
    return model
'''


def body() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, 10))


@models.register("own-defend-test-cnn")
def zoo_body() -> nn.Sequential:
    return body()


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained on normalised 8x8 digits: ``pixels.pt`` (TorchScript, normalisation inside),
    ``own_defend_net:net`` (a factory that needs --mean/--std) and a whole pickled model."""
    root = tmp_path_factory.mktemp("own-defend")
    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    torch.manual_seed(0)
    core = body()
    train_classifier(Normalized(core, [MEAN], [STD]), train.x, train.y, test.x, test.y, epochs=4, lr=1e-2, seed=0,
                     progress=False)
    core.eval()
    normalised = Normalized(core, [MEAN], [STD]).eval()
    torch.jit.save(torch.jit.trace(normalised, test.x[:2]), str(root / "pixels.pt"))
    save_file({k: v.contiguous() for k, v in core.state_dict().items()}, str(root / "net.safetensors"))
    (root / "own_defend_net.py").write_text(FACTORY)
    torch.save(normalised, root / "pickled.pt")
    models.save(core, root / "zoo", {"arch": {"name": "own-defend-test-cnn"}, "bounds": [0.0, 1.0]})
    return root


def dae_args(model: str, out: Path, *extra: str) -> list[str]:
    return ["defend", "dae", "--model", model, "--data", "digits", "--out", str(out), "--epochs", "2", "--lr", "0.01",
            "--width", "8", "-n", "10", "--attacks", "fgsm-0.1", "--device", "cpu", *extra]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
