"""The operations of :class:`salmap.explain.occlusion_deltas.Deltas` on differences held on regions.

A difference ``d = a(x') - a(x)`` of a 2-D activation that an occluding patch can change only on
a :class:`~salmap.explain.occlusion_regions.Region` is kept there: a convolution, a pooling, a
pointwise operation (``g(c + d) - g(c)``, ``c`` cut out of the clean activation), batch norm, a
sum and a global mean keep it local; anything else first writes it out at full size.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from salmap.explain.occlusion_clean import ImageValues
from salmap.explain.occlusion_regions import (
    Region,
    crop_plan,
    cut,
    recrop,
    to_full,
    window_input,
    window_of,
    with_zero_row,
)

#: pointwise modules and functions: on a region, ``g(c + d) - g(c)`` with ``c`` cut out of the clean value
_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                      nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus)
_POINTWISE_FUNCTIONS: set[Any] = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid,
                                  F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.mish}
_POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
#: 0 as a CPU scalar tensor (a binary operation takes it on any device, in the other operand's dtype)
_ZERO = torch.zeros(())


class Difference:
    """A value given as ``clean + d`` (``d`` in the low dtype, batch of copies); with a ``region``,
    ``d`` holds the region of a 2-D activation, and the difference is zero outside it; ``rows``:
    ``d``'s channels-last rows and a zero row after them, when ``d`` was made so
    (:func:`~salmap.explain.occlusion_regions.with_zero_row`: its zero-filled cut-outs take one pass)."""

    __slots__ = ("d", "region", "rows")

    def __init__(self, d: Tensor, region: Region | None = None, rows: Tensor | None = None) -> None:
        self.d = d
        self.region = region
        self.rows = rows



class RegionOps:
    """What :class:`~salmap.explain.occlusion_deltas.Deltas` does to region-held differences (a
    mixin: it uses the graph's ``modules``, the low ``dtype``, ``_low``, ``_call`` and the clean
    values)."""

    modules: dict[str, nn.Module]
    dtype: torch.dtype
    _clean: ImageValues | None
    _held: dict[int, Tensor]
    varying: set[fx.Node]
    _low: Callable[[Tensor], Tensor]  # the weight in the low dtype
    _call: Callable[..., Any]  # the node on given input values (call_node's node, value, fresh)

    def _expanded(self, env: dict[fx.Node, Any], node: fx.Node) -> Any:
        """``env[node]``, a region-held difference first written out at full size (and kept so)."""
        v = env[node]
        if isinstance(v, Difference) and v.region is not None:
            assert self._clean is not None
            v = env[node] = Difference(to_full(v.d, v.region, self._clean[node]))
        return v

    def _expand_inputs(self, node: fx.Node, env: dict[fx.Node, Any]) -> None:
        for a in node.all_input_nodes:
            self._expanded(env, a)

    def _regional(self, node: fx.Node, env: dict[fx.Node, Any], clean: ImageValues) -> Difference | None:
        """The node's difference on a region when its varying input is held on one and the node
        keeps it local (a convolution, a pooling, a pointwise operation, a sum); ``None`` else."""
        inputs = [env[a] for a in node.all_input_nodes if isinstance(env[a], Difference)]
        if not inputs or all(v.region is None for v in inputs) \
                or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
            return None
        args: Any = node.args
        if node.op == "call_module":
            mod: Any = self.modules[str(node.target)]
            if len(args) != 1 or node.kwargs or mod.training:
                return None
            v = env[args[0]]
            if type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and mod.dilation == (1, 1) \
                    and not isinstance(mod.padding, str):
                return self._slide(v, node, mod.kernel_size, mod.stride, mod.padding, clean,
                                   lambda x: F.conv2d(x, self._low(mod.weight), None, mod.stride, 0, 1, mod.groups))
            if type(mod) is nn.MaxPool2d and _pair(mod.dilation) == (1, 1) and not mod.ceil_mode \
                    and not mod.return_indices:
                k, s = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
                return self._slide(v, node, k, s, _pair(mod.padding), clean,
                                   lambda x: F.max_pool2d(x, k, s), values=clean[args[0]])
            if type(mod) is nn.AvgPool2d and not mod.ceil_mode and mod.count_include_pad \
                    and mod.divisor_override is None:
                k, s = _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
                return self._slide(v, node, k, s, _pair(mod.padding), clean, lambda x: F.avg_pool2d(x, k, s))
            if type(mod) is nn.AdaptiveAvgPool2d and _is_one(mod.output_size):
                return self._global_mean(v)
            if type(mod) in (nn.Identity, nn.Dropout, nn.Dropout2d):
                return v
            if type(mod) in _POINTWISE_MODULES or type(mod) is nn.BatchNorm2d and mod.running_mean is not None:
                # (batch norm without running statistics normalises by the batch's: not pointwise)
                return self._pointwise(node, env, clean, v)
            return None
        if node.op == "call_method":
            if node.target in _POINTWISE_METHODS and len(args) == 1 and not node.kwargs:
                return self._pointwise(node, env, clean, env[args[0]])
            if node.target == "mean" and len(inputs) == 1 and isinstance(env[args[0]], Difference):
                dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
                keep = node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
                if isinstance(dims, (tuple, list)) and sorted(int(d) % 4 for d in dims) == [2, 3] \
                        and set(node.kwargs) <= {"dim", "keepdim"}:
                    out = self._global_mean(env[args[0]])
                    return out if keep or out is None else Difference(out.d.flatten(1))
            return None
        if node.op != "call_function":
            return None
        fn: Any = node.target
        if fn in _POINTWISE_FUNCTIONS and isinstance(env[args[0]], Difference) and \
                not any(isinstance(a, fx.Node) for a in args[1:]):
            return self._pointwise(node, env, clean, env[args[0]])
        if fn is F.adaptive_avg_pool2d and len(args) == 2 and _is_one(args[1]):
            return self._global_mean(env[args[0]])
        if node.kwargs:
            return None
        if fn in (operator.add, torch.add, operator.sub, torch.sub) and len(args) == 2:
            return self._sum(args, env, -1 if fn in (operator.sub, torch.sub) else 1)
        if fn in (operator.mul, torch.mul, operator.truediv, torch.div) and len(args) == 2:
            if not self._one_varying(args):
                return None
            a, b = (env[x] if isinstance(x, fx.Node) else x for x in args)
            delta, other = (a, b) if isinstance(a, Difference) else (b, a)
            divides_by_it = fn in (operator.truediv, torch.div) and delta is not a
            if isinstance(other, Difference) or divides_by_it or not _channelwise(other, delta.d.shape[1]):
                return None
            out = delta.d * other if fn in (operator.mul, torch.mul) else delta.d / other
            return Difference(out.to(self.dtype), delta.region)
        if fn in (operator.neg, torch.neg) and len(args) == 1:
            v = env[args[0]]
            return Difference(-v.d, v.region)
        return None

    def _slide(self, v: Difference, node: fx.Node, kernel: Any, stride: Any, padding: Any, clean: ImageValues,
               op: Callable[[Tensor], Tensor], values: Tensor | None = None) -> Difference:
        """A sliding window (no padding; it is cut out with the input) over a region-held ``v``: the
        difference for linear ``op``s, ``op(c + d) - op(c)`` when ``values`` (the clean input) is given."""
        assert v.region is not None
        out_full = tuple(clean[node].shape[-2:])
        kernel, stride, padding = _pair(kernel), _pair(stride), _pair(padding)
        region, reads, size = window_of(v.region, kernel, stride, padding, out_full)
        d = window_input(v.d, v.region, reads, size, v.rows)
        if values is None:
            out = op(d)
        else:  # the padding of a max pooling is -inf
            # (a window without padding reads inside the activation: window_of's clamps)
            plan = v.region.memo(("crop", size), lambda: crop_plan(reads, size, values.shape[-2], values.shape[-1],
                                                                   False, padding != (0, 0)),
                                 anchor=reads)
            # (in the clean values' dtype, each rounded once into the low one on its way out: one kernel each)
            whole = plan.take(values, -math.inf)
            whole.add_(d if torch.promote_types(values.dtype, d.dtype) == values.dtype else d.to(values.dtype))
            pooled = op(whole)
            out = torch.sub(pooled, cut(clean[node], region), out=torch.empty_like(pooled, dtype=self.dtype))
        return Difference(out, region) if region.worth_keeping() else Difference(to_full(out, region, clean[node]))

    def _pointwise(self, node: fx.Node, env: dict[fx.Node, Any], clean: ImageValues, v: Any) -> Difference | None:
        """``g(c + d) - g(c)`` on ``v``'s region, ``c`` cut out of the clean values (the input's dtype);
        ReLU in the low dtype (:meth:`_relu_negative`)."""
        if not isinstance(v, Difference) or v.region is None or len(node.all_input_nodes) != 1:
            return None
        region, source = v.region, node.all_input_nodes[0]
        c = clean[source]
        if not isinstance(c, Tensor) or c.dim() != 4:
            return None
        if is_relu(node, self.modules):
            # relu(c + d) - relu(c) = max(d, -c) - relu(-c): one gather of -c in the low dtype
            negative = cut(self._relu_negative(node, clean), region)
            out, rows = with_zero_row(tuple(v.d.shape), torch.promote_types(v.d.dtype, negative.dtype),  # type: ignore[arg-type]
                                      v.d.device)
            torch.maximum(v.d, negative, out=out)
            return Difference(out.sub_(negative.clamp_(min=0)), region, rows)
        # g(c) on the region is computed again rather than cut out of the clean output: a pointwise
        # operation costs less than a gather, and both terms then come from the same arithmetic
        # (the two inputs are temporaries: an in-place g may write into them)
        base = cut(c, region)
        whole = base + v.d.to(c.dtype)
        with torch.autocast(whole.device.type, enabled=False):
            out = self._call(node, lambda n: whole if n is source else env[n], True)
            out = out - self._call(node, lambda n: base if n is source else env[n], True)
        return Difference(out.to(self.dtype), region)

    def _relu_negative(self, node: fx.Node, clean: ImageValues) -> Tensor:
        """``-c`` of a ReLU's clean input ``c`` in the low dtype, kept with the clean values:
        ``relu(c + d) - relu(c) = max(d, -c) + min(c, 0)``. With ``c`` rounded to the low dtype
        the error stays relative to ``d``: where the clean activation's sign does not change, the
        result is ``d`` or exactly 0; where it does, ``|c| < |d|``. (One kernel, computed in ``c``'s
        dtype and rounded once, as ``(-c).to(dtype)``.)"""
        return clean.derived((node, "-c"), node.args[0],  # type: ignore[arg-type]
                             lambda c: torch.mul(c, -1, out=torch.empty_like(c, dtype=self.dtype)))

    def _relu_low(self, node: fx.Node, clean: ImageValues) -> Tensor:
        """``min(c, 0)`` of a ReLU's clean input in the low dtype, kept with the clean values (the
        full-size rule's second term; one kernel, as ``c.clamp(max=0).to(dtype)``)."""
        return clean.derived((node, "min(c, 0)"), node.args[0],  # type: ignore[arg-type]
                             lambda c: torch.minimum(c, _ZERO, out=torch.empty_like(c, dtype=self.dtype)))

    def _global_mean(self, v: Any) -> Difference | None:
        """The mean over both spatial dimensions (``(B, C, 1, 1)``): the region's sum over the
        activation's size."""
        if not isinstance(v, Difference):
            return None
        if v.region is None:
            return Difference(v.d.mean(dim=(2, 3), keepdim=True))
        h, w = v.region.full
        return Difference(v.d.sum(dim=(2, 3), keepdim=True) / (h * w))

    def _sum(self, args: Any, env: dict[fx.Node, Any], sign: int) -> Difference | None:
        """``p + sign * q`` of region-held differences (on the larger region, which must hold the
        other: recorded for :meth:`regions_held`), or of one and a channel-wise constant."""
        p, q = (env[x] if isinstance(x, fx.Node) else x for x in args)
        if isinstance(p, Difference) and isinstance(q, Difference):
            # (both of one activation's size and channels: a sum that broadcasts is done at full size)
            if p.region is None or q.region is None or p.region.full != q.region.full or p.d.shape[1] != q.d.shape[1]:
                return None
            big, small = (p, q) if math.prod(p.region.size) >= math.prod(q.region.size) else (q, p)
            assert big.region is not None and small.region is not None
            outer, inner = big.region, small.region
            inside = outer.memo("holds", lambda: (
                (outer.starts <= inner.starts).all()
                & (inner.starts[:, 0] + inner.size[0] <= outer.starts[:, 0] + outer.size[0]).all()
                & (inner.starts[:, 1] + inner.size[1] <= outer.starts[:, 1] + outer.size[1]).all()), anchor=inner)
            self._held[id(inside)] = inside  # (read once, by regions_held)
            moved = recrop(small.d, small.region, big.region, small.rows)
            a, b = (big.d, moved) if big is p else (moved, big.d)
            return Difference(a + b if sign > 0 else a - b, big.region)
        delta, other = (p, q) if isinstance(p, Difference) else (q, p)
        if not isinstance(delta, Difference) or not self._one_varying(args) or not _channelwise(other, delta.d.shape[1]):
            return None
        return Difference(delta.d if delta is p or sign > 0 else -delta.d, delta.region)

    def _one_varying(self, args: Any) -> bool:
        """Whether exactly one of ``args`` is computed from the input (the other is a constant of
        the model: a value computed from the input, a mask say, is not, whatever its shape)."""
        return sum(isinstance(a, fx.Node) and a in self.varying for a in args) == 1


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a ReLU of one input (a module, ``F.relu``/``torch.relu`` or ``.relu()``;
    ``inplace`` or not)."""
    relu = ((node.op == "call_module" and type(modules[str(node.target)]) is nn.ReLU)
            or (node.op == "call_function" and node.target in (torch.relu, F.relu))
            or (node.op == "call_method" and node.target in ("relu", "relu_")))
    return relu and len(node.args) == 1 and isinstance(node.args[0], fx.Node) and set(node.kwargs) <= {"inplace"}


def _is_one(size: Any) -> bool:
    """Whether an adaptive pooling's output size is 1x1 (``None`` in it keeps a dimension)."""
    return size == 1 or isinstance(size, (tuple, list)) and len(size) == 2 and all(v == 1 for v in size)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _channelwise(value: Any, channels: int) -> bool:
    """A constant that leaves a region-held difference of ``channels`` channels on its region and
    its shape: a number, or a tensor without spatial extent, one value or one per channel."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, Tensor) and (value.dim() == 0 or value.dim() == 4 and value.shape[0] == 1
                                          and value.shape[1] in (1, channels) and value.shape[2:] == (1, 1))
