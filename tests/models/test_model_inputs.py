"""A TorchScript model that does not fit the data: the check on one sample names the reason
(the last line of TorchScript's message), not TorchScript's opening line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from salmap.cli import main
from salmap.evaluation.loaded import LoadedModel
from salmap.evaluation.resources import model_task
from salmap.models.inputs import check_fits, error_text

REASON = "expected input[1, 1, 8, 8] to have 3 channels, but got 1 channels instead"


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fit")
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    torch.jit.save(torch.jit.script(net), str(root / "rgb.pt"))
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    np.savez(root / "grey.npz", x=x, y=np.arange(4) % 3, x_test=x, y_test=np.arange(4) % 3)
    return root, torch.jit.load(str(root / "rgb.pt"))


def test_error_text_keeps_the_reason_of_a_torchscript_error(scripted):
    _, model = scripted
    with pytest.raises(RuntimeError) as info:
        model(torch.rand(1, 1, 8, 8))
    assert str(info.value).startswith("The following operation failed in the TorchScript interpreter")
    assert REASON in error_text(info.value) and "\n" not in error_text(info.value)
    assert not error_text(info.value).startswith("RuntimeError")
    plain = ValueError("first line\nsecond line")
    assert error_text(plain) == "first line\nsecond line"  # other errors are left as they are


def test_checks_on_one_sample_name_the_reason(scripted, tmp_path, capsys):
    root, model = scripted
    with pytest.raises(ValueError) as info:
        check_fits(model, torch.rand(1, 1, 8, 8), data="--data grey")
    assert REASON in str(info.value) and "TorchScript interpreter" not in str(info.value)
    assert "?" not in str(info.value)  # no "(takes ? channels)" when the channels are not known
    with pytest.raises(ValueError) as info:
        model_task(LoadedModel("rgb.pt", model, {}, (0.0, 1.0)), type("D", (), {"x": torch.rand(2, 1, 8, 8)})())
    assert REASON in str(info.value) and "RuntimeError: RuntimeError" not in str(info.value)
    rc = main(["attack", "fgsm", "--model", str(root / "rgb.pt"), "--data", f"npz:{root / 'grey.npz'}",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and REASON in err, err
    assert not (tmp_path / "o").exists()


class _Scores(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": x.flatten(1)[:, :3], "probs": x.flatten(1)[:, :3].softmax(1)}


def test_an_output_without_logits_is_not_reported_as_a_shape_problem():
    with pytest.raises(ValueError) as info:
        check_fits(_Scores(), torch.rand(1, 1, 8, 8), data="--data grey")
    assert str(info.value).startswith("model output dict has no key 'logits' (pass output_key= / --output-key")
    assert "cannot run on samples" not in str(info.value)
    with pytest.raises(ValueError) as info:
        model_task(LoadedModel("m", _Scores(), {}, (0.0, 1.0)), type("D", (), {"x": torch.rand(2, 1, 8, 8)})())
    assert str(info.value).startswith("model output dict has no key 'logits'")
