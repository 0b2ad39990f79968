"""What the LRP tests share (``test_lrp_rules``, ``test_lrp_zoo``, ``test_lrp_hooks_and_bad_input``):
float64 by default for every test, the slow reference (every layer as an explicit matrix), and a small MLP."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from salmap.explain import LRP
from salmap.lrp import (
    AlphaBeta,
    Composite,
    Epsilon,
    Rule,
    ZBox,
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


class _FlatLinear(nn.Module):
    """A linear layer reading a (C, H, W) map flattened; used only by the reference."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc
        self.bias = fc.bias

    def forward(self, a: Tensor) -> Tensor:
        out = nn.functional.linear(a.flatten(1), self.fc.weight, self.bias)
        return out


def mlp(bias: bool) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(7, 6, bias=bias), nn.ReLU(), nn.Linear(6, 5, bias=bias), nn.ReLU(),
                         nn.Linear(5, 3, bias=bias))
