"""The layers LRP knows: which are redistributed by a rule, which pass relevance through, and
batch norm merged into the layer before it (canonisation, without modifying the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salmap.frozen import mode_is_fixed

#: layers whose relevance a :class:`Rule` redistributes.
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
CONV_LAYERS: tuple[type[nn.Module], ...] = LINEAR_LAYERS[1:]
#: layers that keep their plain gradient: it is LRP-0 for pooling and exact pass-through for the rest.
PASS_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: element-wise smooth activations: their function gets the pass rule (:mod:`salmap.lrp.functions`).
ACTIVATION_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink,
)

#: ``forward(a, weight, bias)``: the layer's own operation with other parameters.
LayerFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def layer_fn(module: Any) -> LayerFn:
    """The module's operation as a function of ``(input, weight, bias)``."""
    if isinstance(module, nn.Linear):
        return lambda a, w, b: F.linear(a, w, b)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.padding_mode != "zeros":
            raise ValueError(f"LRP supports zero padding only, got padding_mode={module.padding_mode!r}")
        conv: Any = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
        m = module
        return lambda a, w, b: conv(a, w, b, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        convt: Any = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[module.weight.dim() - 2]
        t = module
        return lambda a, w, b: convt(a, w, b, t.stride, t.padding, t.output_padding, t.groups, t.dilation)
    raise ValueError(f"no LRP layer function for {type(module).__name__}")


def out_channel_view(module: Any, scale: Tensor) -> Tensor:
    """``scale`` (one per output channel) shaped to multiply the module's weight."""
    dims = module.weight.dim()
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # weight is (in, out / groups, ...): output channels on dim 1 (groups == 1 checked when merging).
        return scale.view(1, -1, *([1] * (dims - 2)))
    return scale.view(-1, *([1] * (dims - 1)))


def batchnorm_affine(bn: Any, name: str) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``y = s * x + t``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"batch norm {name!r} has no running statistics; LRP cannot merge it")
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s.detach(), t.detach()


def check_supported(model: nn.Module) -> dict[nn.Module, str]:
    """Names of the model's modules; ``ValueError`` naming any layer LRP has no rule for."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        names.setdefault(module, name or "<model>")
        if mode_is_fixed(module):
            raise ValueError(
                "LRP needs forward hooks on the model's layers, and a torch.export (.pt2) module runs its graph "
                "without calling its submodules, so no hook fires; explain the eager model (checkpoint folder or "
                "module:factory), or use gradient or occlusion maps (ISI: indicator='sensitivity') on this one"
            )
        if isinstance(module, torch.jit.ScriptModule):
            raise ValueError(
                f"LRP needs forward hooks on the model's layers, and TorchScript modules such as "
                f"{name or '<model>'!r} do not support hooks; explain the eager model (checkpoint folder or "
                "module:factory), or use gradient or occlusion maps (ISI: indicator='sensitivity') on this one"
            )
        known = isinstance(module, LINEAR_LAYERS + PASS_LAYERS + NORM_LAYERS + ACTIVATION_LAYERS)
        leaf = next(module.children(), None) is None
        own_params = next(module.parameters(recurse=False), None) is not None
        if not known and (leaf or own_params):
            raise ValueError(
                f"LRP has no rule for layer {name or '<model>'!r} of type {type(module).__name__}; "
                f"supported: {sorted({t.__name__ for t in LINEAR_LAYERS + PASS_LAYERS + NORM_LAYERS + ACTIVATION_LAYERS})}"
            )
    return names


def find_batchnorm_pairs(model: nn.Module, x: Tensor, names: dict[nn.Module, str]) -> dict[nn.Module, nn.Module]:
    """Linear layer -> the batch norm that takes its output directly (found on one forward pass of ``x``,
    under the caller's grad mode)."""
    produced: dict[int, tuple[nn.Module, Tensor]] = {}
    pairs: dict[nn.Module, nn.Module] = {}
    unmerged: list[nn.Module] = []

    def on_linear(m: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
        produced[id(out)] = (m, out)  # the tensor is kept so that its id is not reused

    def on_norm(m: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
        entry = produced.get(id(inputs[0]))
        if entry is not None and entry[1] is inputs[0]:
            pairs[entry[0]] = m
        else:
            unmerged.append(m)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, LINEAR_LAYERS):
                handles.append(m.register_forward_hook(on_linear))
            elif isinstance(m, NORM_LAYERS):
                handles.append(m.register_forward_hook(on_norm))
        model(x)
    finally:
        for h in handles:
            h.remove()
    if unmerged:
        name = names.get(unmerged[0], "?")
        raise ValueError(
            f"batch norm layer {name!r} ({type(unmerged[0]).__name__}) does not directly follow a "
            "Conv/Linear layer; LRP can only merge batch norm into the layer before it"
        )
    for lin, bn in pairs.items():
        if isinstance(lin, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and lin.groups != 1:
            raise ValueError(f"LRP cannot merge batch norm {names[bn]!r} into a grouped transposed convolution")
    return pairs
