"""One node of a :mod:`torch.fx` graph called on values given for its inputs (the graph
interpreter of :class:`salmap.explain.occlusion_deltas.Deltas`), and which nodes write into
their input."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn


def call_node(node: fx.Node, value: Callable[[fx.Node], Any], graph: fx.GraphModule,
              modules: dict[str, nn.Module], fresh: bool = False) -> Any:
    """``node`` computed on ``value(input)`` for each input node. An operation that writes into its
    input (:func:`writes_into_input`) works on copies of the values, which stay as they were,
    unless they are ``fresh`` (temporaries of the caller's, written into as they are)."""
    args = map_nodes(node.args, value)
    kwargs = map_nodes(node.kwargs, value)
    if not fresh and writes_into_input(node, modules):
        args, kwargs = _map_tensors(args, torch.clone), _map_tensors(kwargs, torch.clone)
    if node.op == "call_module":
        return modules[node.target](*args, **kwargs)  # type: ignore[index]
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)  # type: ignore[arg-type]
    if node.op == "get_attr":
        return _attr(graph, node.target)  # type: ignore[arg-type]
    raise ValueError(f"unexpected graph node {node.op}")  # pragma: no cover


def map_nodes(value: Any, fn: Callable[[fx.Node], Any]) -> Any:
    """``value`` (an argument structure) with every node in it replaced by ``fn(node)``."""
    return fx.node.map_aggregate(value, lambda v: fn(v) if isinstance(v, fx.Node) else v)


def writes_into_input(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write into its first input: a module or function called with
    ``inplace=True`` (also positionally, as in ``F.relu(x, True)``), a method or function whose
    name ends in ``_`` (``x.relu_()``, ``torch.relu_``) or an augmented assignment operator."""
    if node.op == "call_module":
        return getattr(modules[str(node.target)], "inplace", False) is True
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in _INPLACE_OPERATORS or name.endswith("_") or node.kwargs.get("inplace") is True
                or any(a is True for a in node.args[1:]))
    return False


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.imatmul}


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    return fx.node.map_aggregate(value, lambda v: fn(v) if isinstance(v, Tensor) else v)


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for name in target.split("."):
        obj = getattr(obj, name)
    return obj
