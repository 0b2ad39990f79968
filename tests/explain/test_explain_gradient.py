"""Gradient saliency: the weights of a linear model; targets; one forward pass; state restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salmap.explain import GradientSaliency


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double().eval()


def test_linear_model_saliency_is_the_weights():
    model = linear_model()
    w = model[1].weight.view(4, 2, 3, 3)
    x = torch.rand(3, 2, 3, 3, dtype=torch.float64) - 0.5
    classes = torch.tensor([2, 0, 3])
    signed = GradientSaliency(model, absolute=False).attribute(x, target=classes)
    torch.testing.assert_close(signed, w[classes], rtol=0, atol=0)
    torch.testing.assert_close(GradientSaliency(model).attribute(x, target=classes), w[classes].abs())
    gxi = GradientSaliency(model, absolute=False, times_input=True).attribute(x, target=classes)
    torch.testing.assert_close(gxi, w[classes] * x)
    torch.testing.assert_close(GradientSaliency(model, times_input=True).attribute(x, target=classes),
                               (w[classes] * x).abs())



def test_a_0d_target_is_every_sample_s_class():
    # captum takes a one-element tensor target for the whole batch; so does an int here
    model = linear_model()
    w = model[1].weight.view(4, 2, 3, 3)
    x = torch.rand(3, 2, 3, 3, dtype=torch.float64)
    maps = GradientSaliency(model, absolute=False).attribute(x, target=torch.tensor(2))
    torch.testing.assert_close(maps, w[[2, 2, 2]], rtol=0, atol=0)

def test_default_target_is_prediction_and_one_forward_pass():
    model = linear_model()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(1))
    x = torch.rand(5, 2, 3, 3, dtype=torch.float64)
    sal = GradientSaliency(model, absolute=False).attribute(x)
    assert len(calls) == 1
    pred = model(x).argmax(dim=1)
    torch.testing.assert_close(sal, model[1].weight.view(4, 2, 3, 3)[pred])


def test_segmenter_targets_with_masks():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 1).double().eval()  # per pixel: out[k] = sum_c a[k, c] x[c] + b[k]
    x = torch.rand(2, 2, 4, 5, dtype=torch.float64)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 1:3, 2:] = True
    mask[1, 0, 0] = True
    classes = torch.tensor([2, 0])
    sal = GradientSaliency(conv, absolute=False).attribute(x, target=classes, mask=mask)
    a = conv.weight[:, :, 0, 0]
    want = a[classes][:, :, None, None] * mask[:, None].double()
    torch.testing.assert_close(sal, want)
    # (H, W) mask broadcast over the batch
    sal2 = GradientSaliency(conv, absolute=False).attribute(x, target=1, mask=mask[0])
    torch.testing.assert_close(sal2, a[1][None, :, None, None] * mask[0][None, None].double().expand(2, 2, 4, 5))


def test_binary_segmenter_sign():
    conv = nn.Conv2d(1, 1, 1, bias=False).double().eval()
    with torch.no_grad():
        conv.weight.fill_(3.0)
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    mask = torch.ones(3, 3, dtype=torch.bool)
    one = GradientSaliency(conv, absolute=False).attribute(x, target=1, mask=mask)
    zero = GradientSaliency(conv, absolute=False).attribute(x, target=0, mask=mask)
    assert torch.all(one == 3.0) and torch.all(zero == -3.0)


def test_batched_equals_one_by_one_and_state_restored():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model.train()
    model[0].weight.requires_grad_(False)
    x = torch.rand(4, 1, 6, 6)
    before = x.clone()
    sal = GradientSaliency(model, absolute=False).attribute(x, target=[0, 1, 2, 0])
    assert torch.equal(x, before) and x.grad is None and not x.requires_grad
    assert model.training and not model[0].weight.requires_grad and model[1].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for i, t in enumerate([0, 1, 2, 0]):
        one = GradientSaliency(model, absolute=False).attribute(x[i : i + 1], target=t)
        torch.testing.assert_close(one[0], sal[i], rtol=1e-5, atol=1e-7)


def test_bad_input():
    model = linear_model()
    conv = nn.Conv2d(2, 3, 1).double()
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 3\) or \(2, 3, 3\), got \(2, 4, 4\)"):
        GradientSaliency(conv).attribute(x, target=0, mask=torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask is only for segmenters"):
        GradientSaliency(model).attribute(x, target=0, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="target must be class indices in"):
        GradientSaliency(model).attribute(x, target=[0, 9])
    with pytest.raises(ValueError, match="x must be finite"):
        GradientSaliency(model).attribute(x * float("nan"))
    with pytest.raises(ValueError, match="model must be"):
        GradientSaliency(3)  # type: ignore[arg-type]
