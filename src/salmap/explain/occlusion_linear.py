"""The rule of :class:`~salmap.explain.occlusion_deltas.Deltas` for operations linear in their
varying input: convolutions and linear layers without their bias, average pooling, reshapes,
sums, negation, and products and quotients by a constant run on the differences themselves
(``f(a + d) - f(a) = f(d)``), in the low dtype."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from salmap.explain.occlusion_region_ops import Difference

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: modules that are linear maps without offset (in eval mode): applied to the difference as they are
_LINEAR = (nn.Flatten, nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
           nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
           nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_RESHAPES = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze"}
_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                        torch.transpose, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                        F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}


def linear_difference(node: fx.Node, env: dict[fx.Node, Any], modules: dict[str, nn.Module], varying: set[fx.Node],
                      low: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Tensor | None:
    """The difference of a node linear in its varying input, computed from the differences;
    ``None`` when the node is not one of those (then it is computed in full)."""
    args: list[Any] = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
    deltas = [a for a in args if isinstance(a, Difference)]
    if not deltas or any(isinstance(a, fx.Node) for a in node.kwargs.values()):
        return None
    # every tensor computed from the input must be a difference (sizes computed from it may not)
    if any(a in varying and isinstance(env[a], Tensor) for a in node.all_input_nodes):
        return None
    first: Any = args[0] if args else None
    if node.op == "call_module":
        mod: Any = modules[str(node.target)]
        if len(args) != 1 or node.kwargs or mod.training:
            return None
        d = first.d
        if type(mod) in _CONVS:
            return mod._conv_forward(d, low(mod.weight), None)  # type: ignore[no-any-return]
        if type(mod) is nn.Linear:
            return F.linear(d, low(mod.weight))
        return mod(d) if type(mod) in _LINEAR else None
    if node.op == "call_method" and node.target in _RESHAPES and isinstance(first, Difference) and len(deltas) == 1:
        return getattr(first.d, str(node.target))(*args[1:], **node.kwargs)  # type: ignore[no-any-return]
    if node.op != "call_function" or node.kwargs:
        return None
    fn: Any = node.target
    if fn in _FUNCTIONS and isinstance(first, Difference) and len(deltas) == 1:
        return fn(first.d, *args[1:])  # type: ignore[no-any-return]
    if fn in (operator.add, torch.add, operator.sub, torch.sub) and len(args) == 2:
        sign = -1 if fn in (operator.sub, torch.sub) else 1
        p, q = (x.d if isinstance(x, Difference) else None for x in args)
        if p is not None and q is not None:
            diff = p + q if sign > 0 else p - q
        else:
            diff = p if p is not None else (q if sign > 0 else -q)  # type: ignore[assignment, operator]
        other = [x for x in args if isinstance(x, Tensor)]  # a constant tensor may broadcast the result
        shape = torch.broadcast_shapes(diff.shape, *(o.shape for o in other)) if other else diff.shape
        return diff.expand(shape) if shape != diff.shape else diff
    if fn in (operator.neg, torch.neg) and len(args) == 1:
        return -first.d  # type: ignore[no-any-return]
    if fn in (operator.mul, torch.mul, operator.truediv, torch.div) and len(args) == 2 and len(deltas) == 1:
        if fn in (operator.truediv, torch.div) and not isinstance(first, Difference):
            return None
        a, b = args[0], args[1]
        out: Tensor = (a.d * b if isinstance(a, Difference) else a * b.d) if fn in (operator.mul, torch.mul) else a.d / b
        return out.to(dtype) if out.is_floating_point() else None
    return None

