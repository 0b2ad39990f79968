"""The opt-in 16-bit precision of gradient saliency and Grad-CAM: the float32 maps, to 16-bit accuracy."""

from __future__ import annotations

import pytest
import torch

from salmap import registry
from salmap.explain import GradCAM, GradientSaliency


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("build", [
    lambda m, p: GradientSaliency(m, absolute=False, precision=p),
    lambda m, p: GradCAM(m, layer="2", precision=p),
])
def test_half_precision_maps_follow_the_float32_maps(digits_model, precision, build):
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    full = build(model, "fp32").attribute(x, target=y)
    half = build(model, precision).attribute(x, target=y)
    assert half.dtype == full.dtype == torch.float32 and half.shape == full.shape
    assert correlation(half, full) > (0.99 if precision == "bf16" else 0.999)


def test_precision_is_checked_and_offered_on_the_command_line():
    with pytest.raises(ValueError, match="precision must be one of"):
        GradientSaliency(torch.nn.Linear(2, 2), precision="int8")
    for name in ("gradient", "gradcam"):
        param = {p.name: p for p in registry.get_explainer(name).params}["precision"]
        assert param.default == "fp32" and tuple(param.choices) == ("fp32", "bf16", "fp16")
