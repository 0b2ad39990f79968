"""Defended models saved as TorchScript from the Python API: a trace that does not compute the model is
refused; a Purified TorchScript model and a per-channel denoiser are saved, loaded and not pinned to a
device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from salmap import models
from salmap.defenses import DenoisingAutoencoder, Purified
from salmap.defenses.saving import restore, save_defended
from salmap.models import to_torchscript


class Branchy(nn.Module):
    """A forward whose Python branch depends on the input's values: tracing fixes the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, *unused: object) -> torch.Tensor:
        return self.a(x) if float(x.mean()) > 0.5 else self.b(x)


def test_a_trace_that_does_not_compute_the_model_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    check = torch.cat([torch.zeros(2, 4), torch.ones(3, 4)])
    with pytest.raises(ValueError, match="model traced to TorchScript does not compute what the model computes"):
        to_torchscript(model, check)
    # the Python API: a Purified TorchScript model saved and loaded, the user's model untouched
    net = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval())
    defended = Purified(net, DenoisingAutoencoder(1, 4).eval()).eval()
    x = torch.rand(6, 1, 8, 8)
    save_defended(defended, tmp_path / "f", {"bounds": [0.0, 1.0]}, check=x)
    with torch.no_grad():
        torch.testing.assert_close(models.load(tmp_path / "f")(x), defended(x))


def test_a_per_channel_denoiser_saved_as_torchscript_is_not_pinned_to_a_device(tmp_path: Path) -> None:
    net = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval())
    dae = DenoisingAutoencoder(3, 4, bounds=((0.0, 0.0, 0.0), (1.0, 0.5, 1.0))).eval()
    defended = Purified(net, dae).eval()
    x = torch.rand(6, 3, 8, 8) * 0.5
    save_defended(defended, tmp_path / "f", {"bounds": [[0.0, 0.0, 0.0], [1.0, 0.5, 1.0]]}, check=x)
    loaded = models.load(tmp_path / "f")
    codes = [m.code for _, m in [("", loaded), *loaded.named_modules()] if hasattr(m, "code")]
    assert codes and not any("device(" in code for code in codes)  # .to(device) moves everything it uses
    back = restore(tmp_path / "f", net)
    assert torch.equal(back.denoiser.bound_high, dae.bound_high) and back.denoiser.state_dict().keys() == \
        dae.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), defended(x))
        assert float(loaded.denoiser(x)[:, 1].max()) <= 0.5
        if torch.cuda.is_available():
            torch.testing.assert_close(loaded.to("cuda")(x.cuda()).cpu(), defended(x), rtol=1e-4, atol=1e-4)
