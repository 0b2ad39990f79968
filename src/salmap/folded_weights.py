"""The weight and bias of a convolution with an eval-mode batch norm folded into it, computed
from the two modules' current values (see :mod:`salmap.folding`).

``bn(conv(x)) = conv(x) * scale + shift`` per output channel, with
``scale = weight_bn / sqrt(running_var + eps)`` and
``shift = (bias_conv - running_mean) * scale + bias_bn``: the folded convolution's weight is
the convolution's times ``scale`` (per output channel) and its bias is ``shift``. The
arithmetic is in float64, rounded once to the convolution's dtype.

:func:`refold` computes every pair of a model again at each call of an explainer (the weights
may have changed since): in one pass for all of them, a few dozen operators however many pairs
there are, where one pair at a time takes fourteen each (on a GPU each launches a kernel, and
the device waits for the host to launch them: 280 on a resnet18).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

#: a folded convolution, its convolution and its batch norm
Pair = tuple[nn.Module, _ConvNd, _BatchNorm]


@torch.no_grad()
def refold_one(folded: nn.Module, conv: _ConvNd, bn: _BatchNorm) -> None:
    """Set the weight and bias of ``folded`` (new parameters) to those of ``bn(conv(x))`` from
    their current values (on their device, in their dtype)."""
    assert bn.running_mean is not None and bn.running_var is not None  # checked by the caller
    mean, var = bn.running_mean.double(), bn.running_var.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = (conv.bias.double() - mean if conv.bias is not None else -mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    dtype, device = conv.weight.dtype, conv.weight.device
    if device.type == "cuda" and weight.dim() == 4:  # cuDNN's fastest layout (see salmap.precision.prefers_channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    folded.bias = nn.Parameter(shift.to(dtype=dtype), requires_grad=False)


@torch.no_grad()
def refold(pairs: Sequence[Pair]) -> None:
    """:func:`refold_one` for every pair: written into the folded convolutions' parameters in
    place, in one pass for the pairs whose tensors share the device and dtype of the first
    pair's convolution and whose folded parameters already have their convolution's shape,
    dtype and device; the others (a model moved or converted since) one by one, as new
    parameters. Same values as :func:`refold_one` (the same float64 operations per element)."""
    if not pairs:
        return
    device, dtype = pairs[0][1].weight.device, pairs[0][1].weight.dtype
    batched = [p for p in pairs if _ready(p, device, dtype)]
    for pair in pairs:
        if len(batched) < 2 or not _ready(pair, device, dtype):
            refold_one(*pair)
    if len(batched) >= 2:
        _refold_together(batched)


def _ready(pair: Pair, device: torch.device, dtype: torch.dtype) -> bool:
    folded, conv, bn = pair
    weight, bias = folded.weight, folded.bias
    tensors = [conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return (isinstance(weight, Tensor) and isinstance(bias, Tensor) and weight.shape == conv.weight.shape
            and weight.dtype == bias.dtype == dtype and weight.device == bias.device == device
            and conv.weight.dtype == dtype and all(t.device == device for t in tensors if t is not None))


def _refold_together(pairs: Sequence[Pair]) -> None:
    convs = [conv for _, conv, _ in pairs]
    bns = [bn for _, _, bn in pairs]
    channels = [conv.out_channels for conv in convs]
    sizes = [conv.weight.numel() for conv in convs]
    f64 = torch.float64
    mean = _joined([bn.running_mean for bn in bns], channels, 0.0)
    var = _joined([bn.running_var for bn in bns], channels, 0.0)
    assert mean is not None and var is not None  # checked by the caller
    eps = [float(bn.eps) for bn in bns]
    if len(set(eps)) == 1:
        var = var + eps[0]
    else:
        var = var.clone()
        torch._foreach_add_(list(var.split(channels)), eps)  # type: ignore[arg-type]
    scale = torch.rsqrt(var)
    if (gamma := _joined([bn.weight for bn in bns], channels, 1.0)) is not None:
        scale = scale * gamma
    # a missing bias is -0.0: (-0.0 - mean) is -mean and shift + -0.0 is shift, signed zeros included
    bias = _joined([conv.bias for conv in convs], channels, -0.0)
    shift = (bias - mean if bias is not None else -mean) * scale
    if (beta := _joined([bn.bias for bn in bns], channels, -0.0)) is not None:
        shift = shift + beta
    weights = torch.cat([conv.weight.reshape(-1) for conv in convs]).to(f64)
    rows = [w.view(c, -1) for w, c in zip(weights.split(sizes), channels, strict=True)]
    torch._foreach_mul_(rows, [s.view(-1, 1) for s in scale.split(channels)])
    new = weights.to(convs[0].weight.dtype).split(sizes)
    torch._foreach_copy_([f.weight for f, _, _ in pairs],  # type: ignore[misc]
                         [w.view(conv.weight.shape) for w, conv in zip(new, convs, strict=True)])
    torch._foreach_copy_([f.bias for f, _, _ in pairs], list(shift.to(convs[0].weight.dtype).split(channels)))  # type: ignore[misc]


def _joined(tensors: Sequence[Tensor | None], channels: Sequence[int], missing: float) -> Tensor | None:
    """The per-channel vectors (1-D) one after the other, in float64; ``missing`` for a pair
    without one (``None``: no pair has one)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    like = present[0]
    parts = [t if t is not None else like.new_full((c,), missing) for t, c in zip(tensors, channels, strict=True)]
    return torch.cat(parts).to(torch.float64)
