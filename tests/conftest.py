"""Shared fixtures: small models the tests build (and train) themselves in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salmap import models

torch.set_num_threads(min(2, torch.get_num_threads()))


class LinearClassifier(nn.Module):
    """``logits = W x + b`` on flattened inputs: gradients are known by hand."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def small_cnn(in_channels: int = 1, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(classes),
    )


def trained_on_digits(build, epochs: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``build()`` (seeded) trained for a few seconds on scikit-learn's 8x8 digits: ``(model in
    eval mode, test inputs, test labels)``."""
    from salmap import data
    from salmap.training import train_classifier

    xtr, ytr = data.load("digits", "train")
    xte, yte = data.load("digits", "test")
    torch.manual_seed(0)
    model = build()
    train_classifier(model, xtr, ytr, epochs=epochs, batch_size=64, lr=3e-3, progress=False)
    return model.eval(), xte, yte


@pytest.fixture(scope="session")
def digits_model():
    """A small CNN trained for a few seconds on scikit-learn's 8x8 digits, and the test split."""
    return trained_on_digits(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 64), nn.ReLU(), nn.Linear(64, 10),
    ), epochs=8)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits: (train, test) datasets (the defense tests train on them)."""
    from salmap import data

    return data.load_dataset("digits", "train"), data.load_dataset("digits", "test")


def error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The one line a CLI error prints (``salmap COMMAND: error: ...``), with no traceback."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"salmap {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def lenet28(tmp_path):
    """A random-weight lenet checkpoint folder for 1x28x28 images, 10 classes (CLI tests that fail before work)."""
    folder = tmp_path / "lenet"
    models.save(models.build("lenet"), folder, {"bounds": [0.0, 1.0], "input_shape": [1, 28, 28],
                                                "class_names": [str(i) for i in range(10)],
                                                "metrics": {"test_accuracy": 0.9}})
    return str(folder)
