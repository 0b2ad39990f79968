"""LRP: every rule against a slow matrix-form reference, conservation, the zoo, hooks and bad input."""

from __future__ import annotations

import pytest
import torch
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
    lrp_relevance,
)


@pytest.fixture(autouse=True)
def double():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# -- the slow reference: every layer as an explicit matrix, z_ij = a_i w_ij ----------------------


def dense_of(module: nn.Module, shape: tuple[int, ...]) -> Tensor:
    """The matrix ``W`` (out x in) of a bias-free linear module on inputs of ``shape``."""
    n = 1
    for s in shape:
        n *= s
    basis = torch.eye(n).reshape(n, *shape)
    saved = getattr(module, "bias", None)
    with torch.no_grad():
        if saved is not None:
            module.bias = None
        cols = module(basis).reshape(n, -1)
        if saved is not None:
            module.bias = saved
    return cols.T


def redistribute(a: Tensor, w: Tensor, b: Tensor | None, r: Tensor, rule: Rule | None) -> Tensor:
    """One layer of LRP for one sample, straight from the rule's formula."""
    z = a[:, None] * w.T  # z[i, j] = a_i w_ij
    out = torch.zeros_like(a)
    if rule is None or isinstance(rule, Epsilon):
        eps = 0.0 if rule is None else rule.eps
        zj = z.sum(0) + (0 if b is None else b)
        for j in range(z.shape[1]):
            denom = zj[j] + eps * (1.0 if zj[j] >= 0 else -1.0)
            if denom != 0:
                out += z[:, j] / denom * r[j]
        return out
    if isinstance(rule, AlphaBeta):
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        for j in range(z.shape[1]):
            out += rule.alpha * zp[:, j] / (zp[:, j].sum() + rule.eps) * r[j]
            out -= rule.beta * zn[:, j] / (zn[:, j].sum() - rule.eps) * r[j]
        return out
    assert isinstance(rule, ZBox)
    zb = z - rule.low * w.T.clamp(min=0) - rule.high * w.T.clamp(max=0)
    for j in range(z.shape[1]):
        s = zb[:, j].sum()
        out += zb[:, j] / (s + rule.eps * (1.0 if s >= 0 else -1.0)) * r[j]
    return out


def reference_lrp(layers: list[tuple], x: Tensor, target: int, rules: list[Rule | None]) -> Tensor:
    """``layers``: ("linear", module) / ("relu",) / ("maxpool", k) / ("avgpool", k); one sample ``x``."""
    shapes, acts, mats = [], [], []
    a = x
    for layer in layers:
        shapes.append(tuple(a.shape))
        acts.append(a.flatten())
        if layer[0] == "linear":
            m = layer[1]
            w = dense_of(m, tuple(a.shape))
            with torch.no_grad():
                a = m(a[None])[0]
            mats.append((w, None if m.bias is None else m.bias.detach().repeat_interleave(a[0].numel() if a.dim() > 1 else 1)))
        elif layer[0] == "relu":
            a = a.clamp(min=0)
            mats.append(None)
        elif layer[0] == "maxpool":
            pooled, idx = nn.functional.max_pool2d(a[None], layer[1], return_indices=True)
            w = torch.zeros(pooled.numel(), a.numel())
            base = torch.arange(a.shape[0])[:, None] * a.shape[1] * a.shape[2]
            flat_idx = (idx[0].flatten(1) + base).flatten()
            w[torch.arange(pooled.numel()), flat_idx] = 1.0
            mats.append((w, None))
            a = pooled[0]
        elif layer[0] == "avgpool":
            pool = nn.AvgPool2d(layer[1])
            mats.append((dense_of(pool, tuple(a.shape)), None))
            a = pool(a[None])[0]
    r = torch.zeros(a.numel())
    r[target] = a.flatten()[target]
    rule_iter = iter(rules)
    for layer, act, mat in reversed(list(zip(layers, acts, mats, strict=True))):
        if layer[0] == "relu":
            continue
        w, b = mat
        rule = next(rule_iter) if layer[0] == "linear" else None
        r = redistribute(act, w, b, r, rule)
    return r.reshape(x.shape)


def lrp_of(model: nn.Module, x: Tensor, target: int, composite: Composite) -> Tensor:
    return LRP(model, composite=composite).attribute(x, target=target)


RULES = [Epsilon(0.0), Epsilon(0.3), ZPlus(), AlphaBeta(2.0, 1.0), AlphaBeta(1.5, 0.5)]


def mlp(bias: bool) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(7, 6, bias=bias), nn.ReLU(), nn.Linear(6, 5, bias=bias), nn.ReLU(),
                         nn.Linear(5, 3, bias=bias))


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


class _FlatLinear(nn.Module):
    """A linear layer reading a (C, H, W) map flattened; used only by the reference."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc
        self.bias = fc.bias

    def forward(self, a: Tensor) -> Tensor:
        out = nn.functional.linear(a.flatten(1), self.fc.weight, self.bias)
        return out


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


# -- the zoo -----------------------------------------------------------------------------------


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


# -- hooks and bad input -----------------------------------------------------------------------


def test_hooks_removed_after_an_exception() -> None:
    net = mlp(bias=True)

    def broken(out: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        lrp_relevance(net, torch.rand(2, 7), broken, Composite([(nn.Linear, Epsilon())]))
    assert all(not m._forward_hooks for m in net.modules())
    # a rule failing inside the forward pass: ZBox on a layer that does not take the input
    with pytest.raises(ValueError, match="'2'"):
        LRP(net, composite=Composite([(nn.Linear, ZBox())])).attribute(torch.rand(2, 7))
    assert all(not m._forward_hooks for m in net.modules())


def test_unsupported_layer_is_named() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    with pytest.raises(ValueError, match=r"'1\.1'.*Tanh"):
        LRP(net)


def test_composite_without_a_rule_for_a_layer_is_named() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'2'.*Linear"):
        LRP(net, composite=Composite([(nn.Conv2d, Epsilon())])).attribute(torch.rand(1, 1, 3, 3))


def test_batchnorm_not_after_a_linear_layer_is_rejected() -> None:
    net = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match=r"'0'.*BatchNorm1d"):
        LRP(net, composite="epsilon").attribute(torch.rand(2, 3))


def test_bad_arguments() -> None:
    net = mlp(bias=True)
    with pytest.raises(ValueError, match="composite"):
        LRP(net, composite="nonsense")
    with pytest.raises(ValueError, match="alpha - beta"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="eps"):
        Epsilon(-1.0)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        LRP(lambda x: x)


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
