"""A model held still while salmap runs it: eval mode and parameters that need no gradient.

:func:`frozen` is the one place that changes a caller's model, and it puts every flag back
on exit; exported (``torch.export``) modules keep the mode they were exported in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]  # (not in its __all__)

M = TypeVar("M")


def mode_is_fixed(module: nn.Module) -> bool:
    """Whether ``module``'s train/eval mode cannot be changed: a ``torch.export`` module
    (``ExportedProgram.module()``), whose mode was fixed when it was exported and whose
    ``train()``/``eval()`` raise."""
    return "train" in vars(module)


def set_eval(model: nn.Module) -> nn.Module:
    """``model.eval()``, except for exported submodules, which keep the mode they were exported in.

    Returns ``model``.
    """
    if mode_is_fixed(model):
        return model
    if not any(mode_is_fixed(m) for m in model.modules()):
        return model.eval()
    model.training = False
    for child in model.children():
        set_eval(child)
    return model


@contextmanager
def frozen(model: M, eval_mode: bool = True, modules: list[nn.Module] | None = None) -> Iterator[M]:
    """Run a block with ``model`` in eval mode and its parameters not requiring grad.

    The model's ``training`` flag (of every submodule) and every parameter's
    ``requires_grad`` are restored on exit, even when the block raises. Plain
    callables pass through unchanged. Exported (``torch.export``) modules keep their
    fixed mode (see :func:`set_eval`).

    It runs on every attack call, so it does little: one walk over the modules, no ``eval()``
    call when every module is in eval mode already (the usual case), and on exit only the
    flags that differ from the saved ones are written back. ``modules``: :func:`modules_of`
    when the caller has walked them already.
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    if modules is None:
        modules = modules_of(model)
    modes = [m.training for m in modules]
    # a lazy module's parameters are created by its first forward pass: they are left as they are
    params = [p for p in module_tensors(modules) if not isinstance(p, UninitializedTensorMixin)]
    flags = [p.requires_grad for p in params]
    try:
        if eval_mode and any(modes):
            set_eval(model)
        for p, flag in zip(params, flags, strict=True):
            if flag:
                p.requires_grad = False  # (a parameter is a leaf: the attribute is requires_grad_'s, cheaper)
        yield model
    finally:
        for m, mode in zip(modules, modes, strict=True):
            if m.training != mode:
                m.training = mode
        for p, flag in zip(params, flags, strict=True):
            if p.requires_grad != flag:
                p.requires_grad = flag


def modules_of(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())``: the same modules in the same order (depth first, each once),
    walked over the modules' tables without ``named_modules()``' nested generators, which cost
    about twice as much on every call of an attack (benchmarks/call_bookkeeping.py)."""
    out: list[nn.Module] = []
    seen: set[int] = set()

    def visit(m: nn.Module) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
            for child in m._modules.values():
                if child is not None:
                    visit(child)

    visit(model)
    return out


def module_tensors(modules: list[nn.Module], buffers: bool = False) -> list[Tensor]:
    """The parameters (and with ``buffers`` the buffers) of ``modules``, read from their tables
    without ``named_parameters()``' de-duplicating walk (a shared one may come more than once)."""
    if buffers:
        return [t for m in modules for table in (m._parameters, m._buffers) for t in table.values() if t is not None]
    return [t for m in modules for t in m._parameters.values() if t is not None]
