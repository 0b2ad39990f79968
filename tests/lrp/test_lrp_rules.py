"""LRP rules: each rule (epsilon, z+, alpha-beta, z^B) against the slow matrix-form reference on MLPs,
convolutions with max and average pooling, merged batch norm and a residual addition; conservation
without biases; epsilon(0) is gradient times input."""

from __future__ import annotations

import _lrp_reference as shared
import pytest
import torch
from _lrp_reference import _FlatLinear, lrp_of, mlp, redistribute, reference_lrp
from torch import Tensor, nn

from salmap import models
from salmap.explain import LRP
from salmap.lrp import (
    AlphaBeta,
    Composite,
    Epsilon,
    Rule,
    ZBox,
    ZPlus,
)

double = shared.double  # (a fixture)


RULES = [Epsilon(0.0), Epsilon(0.3), ZPlus(), AlphaBeta(2.0, 1.0), AlphaBeta(1.5, 0.5)]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_each_rule_matches_matrix_reference_on_mlp(rule: Rule) -> None:
    net = mlp(bias=True)
    x = torch.rand(3, 7) * 2 - 0.5
    layers = [("linear", net[0]), ("relu",), ("linear", net[2]), ("relu",), ("linear", net[4])]
    got = lrp_of(net, x, 2, Composite([(nn.Linear, rule)]))
    ref_rules: list[Rule | None] = [rule, rule, rule]  # applied from the output layer down
    for i in range(3):
        torch.testing.assert_close(got[i], reference_lrp(layers, x[i], 2, ref_rules))


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_each_rule_matches_matrix_reference_on_convnet_with_pooling(rule: Rule) -> None:
    torch.manual_seed(2)
    conv1, conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 2, stride=1)
    fc = nn.Linear(16, 5)
    # shapes: (2,6,6) -> (3,6,6) -> pool (3,3,3) -> (4,2,2) -> 16
    net = nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2, nn.ReLU(), nn.Flatten(), fc)
    x = torch.rand(2, 2, 6, 6)
    layers = [("linear", conv1), ("relu",), ("maxpool", 2), ("linear", conv2), ("relu",), ("linear", _FlatLinear(fc))]
    composite = Composite([(nn.Linear, Epsilon(0.1)), ((nn.Conv2d,), rule)])
    got = lrp_of(net, x, 1, composite)
    for i in range(2):
        ref = reference_lrp(layers, x[i], 1, [Epsilon(0.1), rule, rule])
        torch.testing.assert_close(got[i], ref)



def test_avgpool_with_window_matches_reference() -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    fc = nn.Linear(2 * 2 * 2, 3)
    net = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), fc)
    x = torch.rand(2, 1, 4, 4)
    layers = [("linear", conv), ("relu",), ("avgpool", 2), ("linear", _FlatLinear(fc))]
    got = lrp_of(net, x, 0, Composite([(nn.Linear, Epsilon(0.0)), (nn.Conv2d, ZPlus())]))
    for i in range(2):
        torch.testing.assert_close(got[i], reference_lrp(layers, x[i], 0, [Epsilon(0.0), ZPlus()]))


def test_zbox_first_layer_matches_reference_and_uses_bounds() -> None:
    net = mlp(bias=False)
    x = torch.rand(2, 7) * 0.8 - 0.3
    layers = [("linear", net[0]), ("relu",), ("linear", net[2]), ("relu",), ("linear", net[4])]
    box = ZBox(-0.5, 0.7)
    composite = Composite([(nn.Linear, Epsilon(0.0))], first=box)
    got = lrp_of(net, x, 1, composite)
    for i in range(2):
        torch.testing.assert_close(got[i], reference_lrp(layers, x[i], 1, [Epsilon(0.0), Epsilon(0.0), box]))
    # zero inputs still receive relevance from the bounds (not so with epsilon everywhere)
    some_zero = torch.rand(4, 7)
    some_zero[:, :3] = 0.0
    assert lrp_of(net, some_zero, 1, composite)[:, :3].abs().sum() > 0
    assert lrp_of(net, some_zero, 1, Composite([(nn.Linear, Epsilon(0.0))]))[:, :3].abs().sum() == 0


def test_batchnorm_is_merged_like_the_matrix_reference() -> None:
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    fc = nn.Linear(3 * 3 * 3, 4)
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), fc).eval()
    # the reference: the merged layer W' = s W, b' = t built by hand as an explicit conv
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    merged = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        merged.weight.copy_(conv.weight * s[:, None, None, None])
        merged.bias.copy_(bn.bias - bn.running_mean * s)
    x = torch.rand(2, 1, 5, 5)
    layers = [("linear", merged), ("relu",), ("linear", _FlatLinear(fc))]
    for rule in (Epsilon(0.2), ZPlus(), AlphaBeta(2.0, 1.0)):
        got = lrp_of(net, x, 3, Composite([(nn.Linear, Epsilon(0.0)), (nn.Conv2d, rule)]))
        for i in range(2):
            torch.testing.assert_close(got[i], reference_lrp(layers, x[i], 3, [Epsilon(0.0), rule]))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c = nn.Linear(4, 5, bias=False), nn.Linear(4, 5, bias=False), nn.Linear(5, 2, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.c(self.relu(self.a(x) + self.b(x)))


def test_residual_addition_splits_relevance_in_proportion() -> None:
    net = Residual()
    x = torch.rand(3, 4)
    got = lrp_of(net, x, 0, Composite([(nn.Linear, Epsilon(0.0))]))
    for i in range(3):
        za, zb = net.a(x[i]).detach(), net.b(x[i]).detach()
        h = (za + zb).clamp(min=0)
        r_h = redistribute(h, net.c.weight.detach(), None, torch.tensor([net(x[i : i + 1])[0, 0].item(), 0.0]), None)
        total = za + zb
        share_a = torch.where(total != 0, za / total, torch.zeros_like(total)) * r_h
        share_b = torch.where(total != 0, zb / total, torch.zeros_like(total)) * r_h
        ref = redistribute(x[i], net.a.weight.detach(), None, share_a, None)
        ref = ref + redistribute(x[i], net.b.weight.detach(), None, share_b, None)
        torch.testing.assert_close(got[i], ref)


# alpha-beta conserves only where both positive and negative contributions exist, so it is left out
@pytest.mark.parametrize("rule", [Epsilon(0.0), ZPlus()], ids=repr)
def test_conservation_without_bias(rule: Rule) -> None:
    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False),
    )
    x = torch.rand(4, 1, 8, 8)
    logits = net(x)
    target = logits.argmax(1)
    composite = Composite([(nn.Linear, Epsilon(0.0)), (nn.Conv2d, rule)], first=ZBox(0.0, 1.0))
    relevance = LRP(net, composite=composite).attribute(x, target=target)
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits.gather(1, target[:, None])[:, 0].detach())


def test_epsilon_zero_is_gradient_times_input() -> None:
    net = models.build("lenet").double().eval()
    x = torch.rand(2, 1, 28, 28)
    target = torch.tensor([3, 7])
    relevance = LRP(net, composite="epsilon", eps=0.0).attribute(x, target=target)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(xg).gather(1, target[:, None]).sum(), xg)
    torch.testing.assert_close(relevance, x * grad)
