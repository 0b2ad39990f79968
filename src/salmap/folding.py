"""Eval-mode batch norm folded into the convolution before it, on a private graph of the model.

In eval mode a batch norm with running statistics is a fixed per-channel affine map,
``y = (x - mean) / sqrt(var + eps) * weight + bias``; after a convolution it folds into the
convolution's weight and bias (Ioffe and Szegedy 2015, section 3.2; what TensorRT and
``torch.fx.experimental.optimization.fuse`` do). The folded model computes the same function
with one pass over each activation less (the convolution adds its bias in the same kernel on
the CPU); only the rounding differs (the folded weights are computed in float64 and rounded
once to the weights' dtype). Used for the many forward passes of occlusion.

:func:`fold_batchnorm` never changes the caller's model: it traces a wrapper around it with
:mod:`torch.fx` and builds a new module from that graph that calls the caller's own modules,
except for each folded pair, which becomes one new convolution. It returns ``None`` (use the
model as it is) when folding could change what the model computes or cannot be done: not an
``nn.Module``, TorchScript, any hook (forward, pre-forward or backward, on any submodule or
global: hooks may carry semantics), parametrizations or uninitialized (lazy) parameters, a
forward that :mod:`torch.fx` cannot trace, or no convolution whose only user is an eval-mode
batch norm with running statistics. :func:`trace` gives the traced (and folded) graph, also
without batch norms (:mod:`salmap.explain.occlusion_deltas` runs it). Tracing runs the model's
``forward`` on proxies; whatever it sets on the model's modules is put back, and a model whose
``forward`` changes them is not traced. An explainer keeps its trace for its next call with
:class:`TraceCache`, which traces again when what the modules hold has changed (its docstring
says how far it looks) and computes the folded weights again at every call, so later changes
of the model (weights, even through ``.data``; hooks; flags; numbers it holds) count.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize

from salmap.folded_weights import Pair, refold, refold_one

logger = logging.getLogger(__name__)

#: Convolution -> the batch norm that folds into it (exact types: a subclass may compute otherwise).
_PAIRS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_OWN = frozenset(vars(nn.Module()))  # (the attributes every module has)
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


class _Root(nn.Module):
    """What gets traced: the caller's model as a child, so that the tracer's bookkeeping (tensor
    constants it stores as attributes) lands here, never on the caller's model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(x)


def fold_batchnorm(model: Any) -> fx.GraphModule | None:
    """A module computing ``model(x)`` with each eval-mode batch norm folded into the convolution
    before it, or ``None`` when the model should run as it is (see the module's docstring).

    Parameters
    ----------
    model: the model, already in the mode it will run in (eval).

    Returns
    -------
    A :class:`torch.fx.GraphModule` sharing every module but the folded convolutions with
    ``model`` (so it costs the memory of the folded weights only), or ``None``.
    """
    traced = trace(model, fold=True)
    if traced is not None and not traced.folded:
        logger.debug("batch norm not folded: no convolution followed only by an eval-mode batch norm")
    return traced.module if traced is not None and traced.folded else None


@dataclass
class Traced:
    """A traced model: ``module`` computes what the model computes; ``folded`` pairs were folded."""

    module: fx.GraphModule
    folded: int


def trace(model: Any, fold: bool, always: bool = False) -> Traced | None:
    """``model`` traced by :mod:`torch.fx` (through a private wrapper), with its batch norms
    folded when ``fold``; ``None`` when it must run as it is (the reasons in the module's
    docstring), and unless ``always``, when it has no eval-mode batch norm to fold (tracing runs
    the model's ``forward`` on proxies, so it is only done when it pays)."""
    return _trace(model, fold, always)[0]


class TraceCache:
    """:func:`trace`, kept for the next call on the same model while nothing the trace depends
    on has changed: the same modules with the same attributes (by identity: a reassigned
    attribute, flag, buffer or submodule traces again) and the same items in the lists, dicts,
    sets and objects they hold (not deeper), no hooks or parametrizations since; a model holding
    a plain tensor or array attribute (maybe read as a number; ``.data`` writes leave no mark) is traced at
    every call. Not seen: changes of classes or global state. The folded convolutions are computed
    again from the current weights at every call (even changed through ``.data``), on their
    device and in their dtype. What an explainer holds to skip tracing on its later calls (a
    resnet18's trace and codegen take about 20 ms on a GPU machine's host, which the device waits for)."""

    def __init__(self) -> None:
        self._kept: tuple[tuple[int, bool, bool], list[Any], list[Any], Traced, list[Pair]] | None = None

    def trace(self, model: Any, fold: bool, always: bool = False) -> Traced | None:
        key = (id(model), fold, always)
        if self._kept is not None:
            kept_key, saved, held, kept, pairs = self._kept
            if kept_key == key and _refusal(model) is None and not _changed(saved) and _same(_held(model), held):
                refold(pairs)
                return kept
        self._kept = None
        traced, pairs = _trace(model, fold, always)
        if traced is not None and (found := _held(model)) is not None:
            self._kept = (key, _snapshot(model), found, traced, pairs)
        return traced

    def __getstate__(self) -> dict[str, Any]:  # (a copy or a pickle traces again)
        return {"_kept": None}


def _trace(model: Any, fold: bool, always: bool) -> tuple[Traced | None, list[Pair]]:
    reason = _refusal(model)
    if reason is None and not always and not (fold and any(_foldable(m) for m in model.modules())):
        reason = "no eval-mode batch norm with running statistics"
    if reason is None:
        saved = _snapshot(model)
        try:
            graph = fx.Tracer().trace(root := _Root(model))
        except Exception as err:  # noqa: BLE001 - any failure to trace means: run the model as it is
            reason = f"torch.fx cannot trace it ({type(err).__name__}: {err})"
        else:
            if _restore(saved):
                reason = "its forward changes the model's attributes (the traced graph would not)"
        finally:
            _restore(saved)
        if reason is None:
            pairs = _fold_pairs(graph, root) if fold else []
            logger.debug("model traced; batch norm folded into %d convolutions", len(pairs))
            return Traced(fx.GraphModule(root, graph), len(pairs)), pairs
    logger.debug("model not traced: %s", reason)
    return None, []


def _refusal(model: Any) -> str | None:
    """Why ``model`` must not be folded, or ``None``, checked without tracing."""
    if not isinstance(model, nn.Module):
        return "not a torch.nn.Module"
    if isinstance(model, torch.jit.ScriptModule):
        return "a TorchScript module"
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return "it holds a TorchScript module (e.g. Normalized(torch.jit.load(...)))"
    if any(getattr(_module, name, None) for name in _GLOBAL_HOOKS):
        return "global module hooks are registered"
    modules = list(model.modules())
    if any(getattr(m, name, None) for m in modules for name in _HOOKS):
        return "it has hooks"
    if any(parametrize.is_parametrized(m) for m in modules):
        return "it has parametrizations"
    if any(nn.parameter.is_lazy(t) for _, t in _tensors(model)):
        return "it has uninitialized (lazy) parameters"
    return None


def _foldable(bn: nn.Module) -> bool:
    return (type(bn) in _PAIRS.values() and not bn.training and bool(getattr(bn, "track_running_stats", False))
            and getattr(bn, "running_mean", None) is not None and getattr(bn, "running_var", None) is not None)


def _fold_pairs(graph: fx.Graph, root: nn.Module) -> list[Pair]:
    """Replace each (convolution, batch norm) call pair in ``graph`` by a call to a new folded
    convolution added to ``root`` (each call site gets its own: modules may be called twice)."""
    modules = dict(root.named_modules())
    pairs: list[Pair] = []
    for node in list(graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]
        if bn is None or not _foldable(bn) or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = modules.get(src.target)  # type: ignore[arg-type]
        if (conv is None or _PAIRS.get(type(conv)) is not type(bn) or conv.training
                or len(src.args) != 1 or src.kwargs or conv.out_channels != bn.num_features):
            continue
        name = f"_folded_{len(pairs)}"
        folded = _folded_conv(conv, bn)  # type: ignore[arg-type]
        root.add_module(name, folded)
        with graph.inserting_after(node):
            new = graph.call_module(name, src.args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        graph.erase_node(src)
        pairs.append((folded, conv, bn))  # type: ignore[arg-type]
    return pairs


def _folded_conv(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A new convolution computing ``bn(conv(x))`` (eval mode)."""
    folded = nn.utils.skip_init(  # no random initialisation: the caller's random stream stays as it was
        type(conv), conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode, device="meta",
    )
    refold_one(folded, conv, bn)
    return folded.eval()


def _tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]]:
    """Every module's attributes and its parameter, buffer and submodule tables (shallow copies)."""
    return [(m, dict(vars(m)), [dict(m._parameters), dict(m._buffers), dict(m._modules)]) for m in model.modules()]


def _changed(saved: list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]]) -> bool:
    """Whether any module's attributes or tables differ from :func:`_snapshot`'s (by identity)."""
    for module, attrs, tables in saved:
        now = vars(module)
        if now.keys() != attrs.keys() or any(now[k] is not v for k, v in attrs.items()):
            return True
        current: list[dict[str, Any]] = [module._parameters, module._buffers, module._modules]
        for table, before in zip(current, tables, strict=True):
            if table.keys() != before.keys() or any(table[k] is not v for k, v in before.items()):
                return True
    return False


def _held(model: nn.Module) -> list[list[Any]] | None:
    """Each list, dict, set or object the modules hold, with its items (not the tables and hooks every
    module has: :func:`_changed`, :func:`_refusal`); None if one holds a plain tensor or array."""
    held: list[list[Any]] = []
    for value in (v for m in model.modules() for k, v in vars(m).items() if k not in _OWN):
        if isinstance(value, Tensor) or hasattr(value, "__array_interface__"):  # (NumPy's)
            return None
        if isinstance(value, dict) or (hasattr(value, "__dict__") and not callable(value)
                                       and not isinstance(value, (nn.Module, type, ModuleType))):
            held.append([value, *(v for kv in (value if isinstance(value, dict) else vars(value)).items() for v in kv)])
        elif isinstance(value, (list, set)):
            held.append([value, *value])
    return held


def _same(now: list[list[Any]] | None, before: list[list[Any]]) -> bool:
    """Whether :func:`_held` found the same objects (by identity: ``==`` on tensors is elementwise)."""
    return now is not None and len(now) == len(before) and all(len(a) == len(b) and all(map(operator.is_, a, b))
                                                               for a, b in zip(now, before, strict=True))


def _restore(saved: list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]]) -> bool:
    """Put back what :func:`_snapshot` saw; whether anything had changed."""
    changed = False
    for module, attrs, tables in saved:
        now = vars(module)
        if now.keys() != attrs.keys() or any(now[k] is not v for k, v in attrs.items()):
            changed = True
            now.clear()
            now.update(attrs)
        current: list[dict[str, Any]] = [module._parameters, module._buffers, module._modules]
        for table, before in zip(current, tables, strict=True):
            if table.keys() != before.keys() or any(table[k] is not v for k, v in before.items()):
                changed = True
                table.clear()
                table.update(before)
    return changed
