"""LRP on the zoo (LeNet, ResNet-18, U-Net): batched equals one by one with the model's state kept,
ResNet's epsilon relevance against gradient times input, U-Net's relevance linear in the pixel mask,
and the epsilon rule's cost: a plain gradient's worth of convolutions and products."""

from __future__ import annotations

import _lrp_reference as shared
import pytest
import torch
from torch import Tensor, nn

from salmap import models
from salmap.explain import LRP
from salmap.lrp import lrp_relevance

double = shared.double  # (a fixture)


def randomise_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.05, 0.05)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.2)  # keeps enough ReLUs open for a non-zero explanation


ZOO = [
    ("lenet", {}, (1, 28, 28)),
    ("resnet18", {"in_channels": 1, "num_classes": 10, "stem": "small", "width": 4}, (1, 16, 16)),
    ("unet", {"in_channels": 1, "num_classes": 3, "base": 4, "depth": 2}, (1, 16, 16)),
]


@pytest.mark.parametrize(("name", "kwargs", "shape"), ZOO, ids=[z[0] for z in ZOO])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon-plus", "epsilon-alpha2-beta1"])
def test_zoo_models_batched_equals_one_by_one_and_state_kept(name, kwargs, shape, composite) -> None:
    torch.manual_seed(7)
    model = models.build(name, **kwargs).double()
    randomise_batchnorm(model)
    model.train()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, *shape)
    x_before = x.clone()
    target = torch.tensor([0, 1, 2])
    explainer = LRP(model, composite=composite)
    mask = torch.ones(3, *shape[1:], dtype=torch.bool) if name == "unet" else None
    relevance = explainer.attribute(x, target=target, mask=mask)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0
    for i in range(3):
        one = explainer.attribute(x[i : i + 1], target=target[i : i + 1], mask=None if mask is None else mask[i : i + 1])
        torch.testing.assert_close(one, relevance[i : i + 1])
    assert torch.equal(x, x_before)
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert all(not m._forward_hooks for m in model.modules())


def test_resnet_epsilon_relevance_is_close_to_gradient_times_input_without_biases() -> None:
    # ResNet has no biases apart from BN's shift and fc; with those zeroed, epsilon(0) LRP is exactly
    # gradient x input, so the merged-BN hooks and residual additions must reproduce it.
    torch.manual_seed(8)
    model = models.build("resnet18", in_channels=1, num_classes=5, stem="small", width=4).double().eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
        model.fc.bias.zero_()
    x = torch.rand(2, 1, 12, 12)
    relevance = LRP(model, composite="epsilon", eps=0.0).attribute(x, target=[1, 4])
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (grad,) = torch.autograd.grad(out[:, [1, 4]].diagonal().sum(), xg)
    torch.testing.assert_close(relevance, x * grad)
    torch.testing.assert_close(relevance.flatten(1).sum(1), out[:, [1, 4]].diagonal().detach())


def test_unet_segmentation_relevance_is_linear_in_the_pixel_mask() -> None:
    torch.manual_seed(9)
    model = models.build("unet", in_channels=1, num_classes=2, base=4, depth=2).double().eval()
    randomise_batchnorm(model)
    x = torch.rand(2, 1, 8, 8)
    top = torch.zeros(8, 8, dtype=torch.bool)
    top[:4] = True
    lrp = LRP(model, composite="epsilon-alpha2-beta1")
    both = lrp.attribute(x, target=1, mask=torch.ones(8, 8, dtype=torch.bool))
    parts = lrp.attribute(x, target=1, mask=top) + lrp.attribute(x, target=1, mask=~top)
    torch.testing.assert_close(both, parts)
    assert both.abs().sum() > 0


# -- cost: the epsilon rule is a plain gradient's worth of work ----------------------------------


def _heavy_ops(fn) -> dict[str, int]:
    """How often ``fn`` runs each convolution / matrix-product operator (forward and backward)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    heavy = ("aten::convolution", "aten::convolution_backward", "aten::addmm", "aten::mm", "aten::linear")
    return {e.key: e.count for e in prof.key_averages() if e.key in heavy}


def test_epsilon_pass_costs_one_forward_and_one_backward() -> None:
    from salmap.gradients import output_vjps
    from salmap.lrp import lrp_plan, make_composite

    torch.manual_seed(10)
    model = models.build("resnet18", in_channels=1, num_classes=5, stem="small", width=4).double().eval()
    randomise_batchnorm(model)
    x = torch.rand(3, 1, 12, 12)

    def onehot(out: Tensor) -> Tensor:
        return nn.functional.one_hot(torch.tensor([0, 1, 2]), out.shape[1]).to(out.dtype)

    plan = lrp_plan(model, x)
    gradient = _heavy_ops(lambda: output_vjps(model, x, [onehot]))
    epsilon = _heavy_ops(lambda: lrp_relevance(model, x, onehot, make_composite("epsilon"), plan))
    plus = _heavy_ops(lambda: lrp_relevance(model, x, onehot, make_composite("epsilon-plus"), plan))
    assert gradient["aten::convolution"] >= 20 and gradient["aten::convolution_backward"] >= 20
    assert epsilon == gradient  # the same convolutions and products: no second forward per layer
    assert plus["aten::convolution"] > gradient["aten::convolution"]  # z+ and z^B have their own passes
