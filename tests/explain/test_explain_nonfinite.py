"""Explainers refuse NaN/inf model outputs in one line (as attacks do), in one read of the device
per call; a map spoilt by a gradient that is not defined (finite outputs) comes with a warning."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _dispatch import Recorder
from conftest import error_line
from torch import nn

from salmap import models
from salmap.cli import main
from salmap.explain import LRP, GradCAM, GradientSaliency, Occlusion
from salmap.explain.base import nonfinite_samples

EXPLAINERS = {
    "gradient": lambda m: GradientSaliency(m),
    "occlusion": lambda m: Occlusion(m, patch=2),
    "gradcam": lambda m: GradCAM(m, layer="0"),
    "lrp": lambda m: LRP(m),
}


def _cnn(poison: float | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3)).eval()
    if poison is not None:
        with torch.no_grad():
            net[3].bias[1] = poison  # class 1's output is NaN (or infinite) for every input
    return net


@pytest.mark.parametrize("name", list(EXPLAINERS))
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_every_explainer_refuses_non_finite_outputs_in_one_line(name, poison):
    x = torch.rand(2, 1, 6, 6)
    explainer = EXPLAINERS[name](_cnn(poison))
    for target in (None, 0):
        with pytest.raises(ValueError) as err:
            explainer.attribute(x, target=target)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("the model's outputs are NaN or infinite on 2 of 2 samples of x"), message
        assert type(explainer).__name__ in message and "expected finite outputs" in message
    assert torch.isfinite(EXPLAINERS[name](_cnn()).attribute(x)).all()  # a finite model: no complaint


class _Spoils(nn.Module):
    """Logits divided by zero (infinite) for the samples whose features sum to at most ``limit``."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.net, self.limit = _cnn(), limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / (x.flatten(1).sum(dim=1, keepdim=True) > self.limit).to(x.dtype)


def test_the_message_counts_the_spoilt_samples_and_segmenters_are_checked_too():
    x = torch.rand(4, 1, 6, 6)
    x[1] *= 0.01
    x[3] *= 0.01
    with pytest.raises(ValueError, match="NaN or infinite on 2 of 4 samples of x"):
        GradientSaliency(_Spoils(limit=1.0)).attribute(x)

    class Segmenter(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = torch.cat([t, 1 - t], dim=1)
            return out * torch.tensor([1.0, float("nan"), 1.0])[:, None, None, None]

    with pytest.raises(ValueError, match="NaN or infinite on 1 of 3 samples of x"):
        GradientSaliency(Segmenter()).attribute(torch.rand(3, 1, 4, 4))


def test_occlusion_refuses_outputs_that_turn_non_finite_on_its_occluded_copies():
    x = torch.rand(2, 1, 6, 6) + 0.5  # each image sums to more than 18: finite outputs
    for fold in (True, False):
        occlusion = Occlusion(_Spoils(limit=17.5), patch=6, fill="zero", fold_batchnorm=fold)
        with pytest.raises(ValueError) as err:
            occlusion.attribute(x)  # the one zero-filled copy of each image sums to 0: infinite outputs
        assert str(err.value).startswith(
            "the model's outputs on the occluded copies of x are NaN or infinite for 2 of 2 samples"), str(err.value)


def test_outputs_that_overflow_float16_are_refused_with_a_pointer_to_bfloat16():
    class Scale(nn.Module):
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * self.factor

    def large() -> nn.Sequential:  # activations of about 1e6 inside: finite in float32 and bfloat16, not in float16
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Scale(1e6), nn.ReLU(), Scale(1e-6), nn.Flatten(),
                             nn.Linear(2 * 36, 3)).eval()

    x = torch.rand(2, 1, 6, 6)
    for precision in ("fp32", "bf16"):
        assert torch.isfinite(Occlusion(large(), patch=3, precision=precision).attribute(x)).all()
    with pytest.raises(ValueError) as err:
        Occlusion(large(), patch=3, precision="fp16").attribute(x)
    assert "NaN or infinite" in str(err.value) and "float16 overflows above 65504: try precision='bf16'" in str(err.value)
    with pytest.raises(ValueError) as err:
        Occlusion(_cnn(float("inf")), patch=3).attribute(x)
    assert "float16" not in str(err.value)


def test_a_map_spoilt_by_an_undefined_gradient_of_finite_outputs_is_returned_with_a_warning():
    class Sqrt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _cnn()

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.net(t) + t.flatten(1)[:, :1].sqrt()  # d sqrt(u)/du is infinite at u = 0

    x = torch.rand(3, 1, 6, 6) + 0.1
    x[2, 0, 0, 0] = 0.0
    with pytest.warns(RuntimeWarning, match="GradientSaliency map is NaN or infinite on 1 of 3 samples of x although"):
        sal = GradientSaliency(Sqrt()).attribute(x)
    assert torch.isinf(sal[2, 0, 0, 0]) and torch.isfinite(sal[:2]).all()  # as captum returns it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradientSaliency(Sqrt()).attribute(x[:2])  # a finite map: no warning


def test_the_check_reads_the_device_once_and_copies_nothing():
    transfers: list[tuple[int, ...]] = []
    original = torch.Tensor.tolist

    def counting(tensor: torch.Tensor) -> Any:
        transfers.append(tuple(tensor.shape))
        return original(tensor)

    x, model = torch.rand(4, 1, 6, 6), _cnn()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", counting)
        for explainer in (GradientSaliency(model), GradCAM(model, layer="0")):
            transfers.clear()
            with Recorder() as recorder:
                explainer.attribute(x)
            # the input's minimum and maximum (check_input), then the outputs' and the map's spoilt samples
            assert transfers == [(2,), (2,)]
            assert recorder.reads == 0
    with Recorder() as recorder:
        count = nonfinite_samples(torch.rand(8, 3, 5, 5))
    # two per-sample reductions, nothing of the tensor's size (no copy, no full-size bool mask)
    assert int(count) == 0 and "aten.clone" not in recorder.ops and "aten.isfinite" not in recorder.ops
    assert recorder.ops.count("aten.amin") == 1 and recorder.ops.count("aten.amax") == 1


def test_cli_explain_with_a_nan_model_fails_in_one_line(tmp_path, capsys):
    net = models.build("lenet")
    with torch.no_grad():
        next(p for p in reversed(list(net.parameters())) if p.dim() == 1)[0] = float("nan")
    models.save(net, tmp_path / "lenet", {"bounds": [0.0, 1.0]})
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 28, 28), dtype=np.float32), y=np.arange(4))
    rc = main(["explain", "--model", str(tmp_path / "lenet"), "--data", f"npz:{tmp_path / 'd.npz'}",
               "--out", str(tmp_path / "out"), "--method", "gradient", "-n", "4"])
    assert rc == 2  # (a ValueError: bad input, as every refused value)
    assert "the model's outputs are NaN or infinite on 4 of 4 samples of x" in error_line(capsys, "explain")
