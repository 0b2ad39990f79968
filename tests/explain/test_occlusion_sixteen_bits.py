"""Occlusion of trained and random-weight models with batch norm in 16 bits: maps that correlate with
float32's (folded or not), and differences from the clean pass where plain autocast fails."""

from __future__ import annotations

import pytest
import torch
from conftest import trained_on_digits
from torch import nn

from salmap.explain import Occlusion


@pytest.fixture(scope="module")
def digits_bn_model():
    """A CNN with batch norm trained for a few seconds on scikit-learn's 8x8 digits."""
    model, xte, yte = trained_on_digits(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    ), epochs=4)
    return model, xte[:8], yte[:8]


def _correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    out = []
    for u, v in zip(a, b, strict=True):
        u, v = u.flatten().double() - u.mean(), v.flatten().double() - v.mean()
        out.append(float((u * v).sum() / (u.norm() * v.norm())))
    return out


def test_trained_model_with_batch_norm_folded_maps_agree(digits_bn_model):
    model, x, y = digits_bn_model
    folded = Occlusion(model, patch=2, stride=1).attribute(x, target=y)
    plain = Occlusion(model, patch=2, stride=1, fold_batchnorm=False).attribute(x, target=y)
    torch.testing.assert_close(folded, plain, rtol=0, atol=1e-4 * float(plain.abs().max()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("fold", [True, False])
def test_half_precision_with_batch_norm_correlates(digits_bn_model, precision, fold):
    model, x, y = digits_bn_model
    full = Occlusion(model, patch=2, stride=1, fold_batchnorm=False).attribute(x, target=y)
    half = Occlusion(model, patch=2, stride=1, precision=precision, fold_batchnorm=fold).attribute(x, target=y)
    assert min(_correlations(half, full)) >= 0.9999
    assert not torch.equal(half, full)


class _Untraceable(nn.Module):
    """A branch on a value: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() >= -1e30 else -x


def test_bf16_differences_beat_plain_autocast_where_scores_barely_move():
    """A random-weight network: occlusion moves the logits by about 1%, bfloat16's rounding of
    whole activations (0.4%) swamps that; differences from the clean pass do not."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    x = torch.rand(2, 3, 24, 24)
    full = Occlusion(model, patch=4, stride=4).attribute(x, target=[0, 1])
    deltas = Occlusion(model, patch=4, stride=4, precision="bf16").attribute(x, target=[0, 1])
    branchy = nn.Sequential(_Untraceable(), *model)  # cannot be traced: plain autocast
    plain = Occlusion(branchy, patch=4, stride=4, precision="bf16").attribute(x, target=[0, 1])
    assert min(_correlations(deltas, full)) >= 0.999
    assert min(_correlations(plain, full)) < min(_correlations(deltas, full))
