"""Batch norm folded into the convolution before it: every pair computed together gives the same
values, bit for bit, as one pair at a time, and both compute ``bn(conv(x))``; pairs whose
folded parameters no longer match their convolution (a model moved or converted) get new ones."""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from salmap import models
from salmap.folded_weights import Pair, refold, refold_one
from salmap.folding import TraceCache


def _pairs(seed: int = 0) -> list[Pair]:
    """Convolution / batch norm pairs of every kind: with and without the convolution's bias and
    the batch norm's affine parameters, other epsilons, 1-D, 2-D and 3-D, random statistics."""
    g = torch.Generator().manual_seed(seed)
    specs: list[tuple[Any, Any, dict[str, Any], dict[str, Any]]] = [
        (nn.Conv2d(3, 4, 3), nn.BatchNorm2d, {}, {}),
        (nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d, {}, {"eps": 1e-3}),
        (nn.Conv2d(6, 2, 3, groups=2), nn.BatchNorm2d, {}, {"affine": False}),
        (nn.Conv1d(2, 5, 3, bias=False), nn.BatchNorm1d, {}, {"eps": 0.1, "affine": False}),
        (nn.Conv3d(1, 3, 2), nn.BatchNorm3d, {}, {}),
    ]
    pairs: list[Pair] = []
    for conv, norm, _, kwargs in specs:
        bn = norm(conv.out_channels, **kwargs).eval()
        with torch.no_grad():
            for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean):
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.05)
        folded = nn.utils.skip_init(type(conv), conv.in_channels, conv.out_channels, conv.kernel_size,
                                    groups=conv.groups, bias=True)
        refold_one(folded, conv, bn)
        pairs.append((folded.eval(), conv.eval(), bn))
    return pairs


def _parameters(pairs: list[Pair]) -> list[torch.Tensor]:
    return [t.detach().clone() for folded, _, _ in pairs for t in (folded.weight, folded.bias)]


def test_every_pair_at_once_equals_one_pair_at_a_time_bit_for_bit():
    pairs = _pairs()
    with torch.no_grad():  # new values since the folded convolutions were made
        for _, conv, bn in pairs:
            conv.weight.mul_(1.5)
            bn.running_mean.add_(0.25)
    refold(pairs)
    together = _parameters(pairs)
    for pair in pairs:
        refold_one(*pair)
    for a, b in zip(together, _parameters(pairs), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_signs_of_zero_are_those_of_one_pair_at_a_time():
    # fresh batch norms (running means of zero) beside pairs with a convolution bias and affine
    # parameters: a missing bias gives -mean * scale = -0.0 one pair at a time
    torch.manual_seed(0)
    specs = [(False, False), (True, True), (False, True), (True, False)]
    pairs: list[Pair] = []
    for bias, affine in specs:
        conv, bn = nn.Conv2d(2, 3, 3, bias=bias).eval(), nn.BatchNorm2d(3, affine=affine).eval()
        folded = nn.utils.skip_init(nn.Conv2d, 2, 3, 3, bias=True)
        refold_one(folded, conv, bn)
        pairs.append((folded.eval(), conv, bn))
    refold(pairs)
    together = _parameters(pairs)
    for pair in pairs:
        refold_one(*pair)
    for a, b in zip(together, _parameters(pairs), strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # (torch.equal(-0.0, 0.0) holds)


def test_the_folded_convolutions_compute_conv_then_batch_norm():
    pairs = _pairs(seed=1)
    for _, conv, bn in pairs:
        conv.double()
        bn.double()
    refold(pairs)  # (new float64 parameters, one pair at a time)
    refold(pairs)  # (all at once, in place)
    shapes = {1: (2, 2, 9), 2: (2, 3, 7, 7), 3: (2, 1, 5, 5, 5)}
    for folded, conv, bn in pairs:
        x = torch.randn(shapes[conv.weight.dim() - 2][:1] + (conv.in_channels,) + shapes[conv.weight.dim() - 2][2:],
                        dtype=torch.float64)
        with torch.no_grad():
            want = bn(conv(x))
            got = folded(x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_written_in_place_and_changes_made_through_data_count():
    pairs = _pairs()
    kept = [(folded.weight, folded.bias) for folded, _, _ in pairs]
    pairs[0][1].weight.data.zero_()  # (no version counter moves)
    pairs[2][2].running_var.data.fill_(4.0)
    refold(pairs)
    assert all(folded.weight is w and folded.bias is b for (folded, _, _), (w, b) in zip(pairs, kept, strict=True))
    assert pairs[0][0].weight.abs().max() == 0
    expected = _pairs()
    expected[0][1].weight.data.zero_()
    expected[2][2].running_var.data.fill_(4.0)
    for pair in expected:
        refold_one(*pair)
    for a, b in zip(_parameters(pairs), _parameters(expected), strict=True):
        assert torch.equal(a, b)


def test_a_converted_model_gets_new_parameters_in_its_dtype():
    pairs = _pairs()
    for _, conv, bn in pairs[1:3]:
        conv.double()
        bn.double()
    refold(pairs)
    dtypes = [folded.weight.dtype for folded, _, _ in pairs]
    assert dtypes == [torch.float32, torch.float64, torch.float64, torch.float32, torch.float32]
    reference = _pairs()
    for _, conv, bn in reference[1:3]:
        conv.double()
        bn.double()
    for pair in reference:
        refold_one(*pair)
    for a, b in zip(_parameters(pairs), _parameters(reference), strict=True):
        assert torch.equal(a, b)


class _Launches(TorchDispatchMode):
    """The operators dispatched that are not views."""

    VIEWS = frozenset({"view", "split_with_sizes", "reshape", "_reshape_alias", "detach", "alias"})

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.__name__.split(".")[0]
        if name not in self.VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def test_a_cached_trace_refolds_a_resnet18_with_a_few_operators_whatever_its_depth():
    counts = []
    for depth in ("resnet18", "resnet34"):
        torch.manual_seed(0)
        model = models.build(depth, num_classes=10, stem="standard").eval()
        cache = TraceCache()
        traced = cache.trace(model, fold=True)
        assert traced is not None and traced.folded >= 20
        with _Launches() as launches:
            assert cache.trace(model, fold=True) is traced
        counts.append(sum(launches.ops.values()))
    assert counts[0] == counts[1] <= 30, counts  # (one pair at a time: 14 per pair, 280 on a resnet18)
