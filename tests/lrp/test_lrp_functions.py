"""Smooth functions in a forward pass, against relevance computed by hand.

Element-wise ones (``torch.sigmoid``, ``F.gelu``, ``nn.Tanh``, in place or not, ``x ** 2``)
pass relevance on unchanged (zennit's pass rule for activations); functions that mix features
(softmax, layer norm) and products of two activations are refused by name and place; functions
of the parameters alone are left alone; piecewise-linear functions keep their modules' relevance."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salmap.attacks import ISI
from salmap.explain import LRP
from salmap.lrp import Composite, Epsilon, lrp_plan, lrp_relevance

LRP0 = Composite([(nn.Linear, Epsilon(0.0))])


class Between(nn.Module):
    """Two linear layers without bias and ``between`` applied to the hidden layer, in the model's own forward."""

    def __init__(self, between: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.last, self.between = nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False), between

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.between(self.first(x)))


def by_hand(net: Between, f: Callable[[Tensor], Tensor], x: Tensor, target: int) -> Tensor:
    """LRP-0 from the paper's sums: R(h_j) = h_j w2_tj; the pass rule R(a_j) = R(h_j); R(x_i) = sum_j x_i w1_ji / a_j R(a_j)."""
    w1, w2 = net.first.weight.detach().double(), net.last.weight.detach().double()
    x = x.double()
    a = x @ w1.T
    r_hidden = f(a.clone()) * w2[target]
    return (x[:, None, :] * w1[None] / a[:, :, None] * r_hidden[:, :, None]).sum(1)


ELEMENTWISE = {
    "torch.sigmoid": torch.sigmoid,
    "F.gelu": F.gelu,
    "nn.Tanh": nn.Tanh(),
    "nn.SiLU": nn.SiLU(),
    "x.sigmoid_()": lambda t: t.sigmoid_(),
    "F.elu(inplace=True)": lambda t: F.elu(t, inplace=True),
    "x ** 2": lambda t: t**2,
    "2 ** x": lambda t: 2**t,
    "x.exp()": lambda t: t.exp(),
    "torch.special.expit": torch.special.expit,
    "torch.atan": torch.atan,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_an_element_wise_function_passes_relevance_on_unchanged(name: str) -> None:
    f = ELEMENTWISE[name]
    net = Between(f)
    x = torch.rand(4, 6) - 0.3
    relevance = LRP(net, composite=LRP0).attribute(x, target=1)
    reference = by_hand(net, lambda t: f(t.float()).double(), x, target=1)
    torch.testing.assert_close(relevance.double(), reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(relevance.sum(1), net(x)[:, 1].detach(), rtol=1e-3, atol=1e-4)  # conserved


REFUSED = {
    "softmax": (lambda t: t.softmax(1), r"'softmax'"),
    "layer_norm": (lambda t: F.layer_norm(t, (5,)), r"'layer_norm'"),
    "gating": (lambda t: t * torch.sigmoid(t), r"'mul' of two activations"),
    "x / |x|": (lambda t: t / t.norm(dim=1, keepdim=True), r"'norm'"),
    "x / (|x| + 1)": (lambda t: t / (t.abs() + 1), r"'div' of two activations"),
    "torch.multiply": (lambda t: torch.multiply(t, t.abs()), r"'multiply' of two activations"),
    "torch.special.log_softmax": (lambda t: torch.special.log_softmax(t, 1), r"'log_softmax'"),
    "logsumexp": (lambda t: t - t.logsumexp(1, keepdim=True), r"'logsumexp'"),
    "x ** x": (lambda t: t.abs() ** t, r"'pow' of two activations"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_function_that_mixes_activations_is_named_with_where_it_was_called(name: str) -> None:
    f, message = REFUSED[name]
    net = Between(f)
    with pytest.raises(ValueError, match=message + r".*forward of the model \(Between\)"):
        LRP(net).attribute(torch.rand(2, 6), target=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_the_innermost_module_running_is_named() -> None:
    net = nn.Sequential(nn.Sequential(Between(F.relu), Between(lambda t: t.log_softmax(1))))
    net[0][1].first = nn.Linear(3, 5)
    with pytest.raises(ValueError, match=r"'log_softmax'.*layer '0\.1' \(Between\)"):
        LRP(net).attribute(torch.rand(2, 6), target=0)


def test_a_function_of_the_parameters_alone_is_left_as_it_is() -> None:
    class Gated(Between):
        def __init__(self) -> None:
            super().__init__(F.relu)
            self.register_buffer("gate", torch.linspace(-2, 2, 5))

        def forward(self, x: Tensor) -> Tensor:
            return self.last(F.relu(self.first(x)) * torch.sigmoid(self.gate))

    gated, plain = Gated(), Between(F.relu)
    with torch.no_grad():
        plain.last.weight.copy_(gated.last.weight * torch.sigmoid(gated.gate))
    x = torch.rand(3, 6)
    torch.testing.assert_close(LRP(gated, composite=LRP0).attribute(x, target=2),
                               LRP(plain, composite=LRP0).attribute(x, target=2), rtol=1e-5, atol=1e-7)


def test_the_isi_attack_with_relevance_refuses_it_too() -> None:
    class LogProbabilities(Between):
        def forward(self, x: Tensor) -> Tensor:
            return F.log_softmax(super().forward(x), dim=1)

    with pytest.raises(ValueError, match=r"'log_softmax'.*the model \(LogProbabilities\)"):
        ISI(LogProbabilities(F.relu), indicator="relevance", max_iter=2)(torch.rand(2, 6), y=torch.tensor([0, 1]))
    ISI(LogProbabilities(F.relu), indicator="sensitivity", max_iter=2)(torch.rand(2, 6), y=torch.tensor([0, 1]))


class Residual(nn.Module):
    """Piecewise-linear functions only: ReLU (in place, after a convolution), pooling, a residual addition,
    concatenation, constants."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(2 * 2 * 2 * 2, 3)
        self.relu = (lambda t: F.relu(t, inplace=True)) if functional else nn.ReLU()
        self.pool = (lambda t: F.max_pool2d(t, 2)) if functional else nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.conv(x)) + x
        h = torch.cat([self.pool(h), 0.5 * F.avg_pool2d(h, 2)], dim=1)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("composite", ["epsilon", "epsilon-plus", "epsilon-alpha2-beta1"])
def test_piecewise_linear_functions_give_the_relevance_of_their_modules(composite: str) -> None:
    x = torch.rand(3, 2, 4, 4)
    as_functions = LRP(Residual(functional=True), composite=composite).attribute(x, target=1)
    as_modules = LRP(Residual(functional=False), composite=composite).attribute(x, target=1)
    assert as_functions.abs().sum() > 0
    torch.testing.assert_close(as_functions, as_modules, rtol=0, atol=0)


def test_the_plan_says_whether_the_pass_rule_is_needed() -> None:
    """Without element-wise smooth functions the LRP pass runs no function mode (no cost per call)."""
    x = torch.rand(2, 6)
    assert lrp_plan(Between(F.relu), x).elementwise is False
    assert lrp_plan(Between(torch.sigmoid), x).elementwise is True
    assert lrp_plan(nn.Sequential(nn.Linear(6, 3), nn.GELU()), x).elementwise is True


def test_an_error_inside_the_pass_rule_s_forward_leaves_no_hook_and_no_mode() -> None:
    def broken(t: Tensor) -> Tensor:
        torch.sigmoid(t)
        raise RuntimeError("boom")

    net = Between(broken)
    plan = lrp_plan(Between(torch.sigmoid), torch.rand(1, 6))  # (a plan that runs the pass rule)
    with pytest.raises(RuntimeError, match="boom"):
        lrp_relevance(net, torch.rand(2, 6), lambda out: torch.ones_like(out), LRP0, plan)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert torch._C._len_torch_function_stack() == 0


class Masked(nn.Module):
    """A softmax under no_grad used as a constant mask, and a constant scale that requires grad as a plain
    tensor attribute: neither is a function of the activations LRP would redistribute through."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first, self.last = nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False)
        self.scale = torch.tensor(2.0, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.first(x))
        with torch.no_grad():
            mask = (h.softmax(1) > 0.1).to(h.dtype)
        return self.last(h * mask * self.scale)


def test_constants_computed_from_activations_or_stored_with_requires_grad_are_not_refused() -> None:
    x = torch.rand(3, 6)
    relevance = LRP(Masked(), composite=LRP0).attribute(x, target=0)
    torch.testing.assert_close(relevance.sum(1), Masked()(x)[:, 0].detach(), rtol=1e-4, atol=1e-5)


def test_the_plan_refuses_in_inference_mode_and_after_a_layer_that_raised() -> None:
    class Fallback(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wrong, self.right = nn.Linear(7, 3), nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            try:
                h = self.wrong(x)
            except RuntimeError:
                h = self.right(x)
            return h.log_softmax(1)

    net = Fallback()
    with pytest.raises(ValueError, match="'log_softmax'"):
        lrp_plan(net, torch.rand(1, 6))
    with torch.inference_mode(), pytest.raises(ValueError, match="'log_softmax'"):
        lrp_plan(net, torch.rand(1, 6))  # (an inference tensor)
