"""LRP's hooks removed after an exception, and bad input (an unsupported layer, a composite without
a rule for a layer, batch norm not after a linear layer, bad arguments) refused with a named error."""

from __future__ import annotations

import _lrp_reference as shared
import pytest
import torch
from _lrp_reference import mlp
from torch import Tensor, nn

from salmap.explain import LRP
from salmap.lrp import (
    AlphaBeta,
    Composite,
    Epsilon,
    ZBox,
    lrp_relevance,
)

double = shared.double  # (a fixture)


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
    net = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.Softmax(1)))
    with pytest.raises(ValueError, match=r"'1\.1'.*Softmax"):
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
