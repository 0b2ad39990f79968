"""The host's bookkeeping on every attack call, beside what it replaced: microseconds per call.

An attack call walks the model's modules once, freezes it (eval mode, parameters not requiring
grad, both put back) and records the parameters' and buffers' version counters (so that reading
``success`` after the model changed is an error). On a GPU these run on the host while the
device waits for the first kernel; with a small batch they are a share of the call. Rows, per
model: the walk (``salmap.frozen.modules_of`` beside ``list(model.modules())``), the version
counters (one list and one read each, beside the generator and the per-tensor inference test
they replaced), and ``frozen`` entered and left (beside its former body, without the context
manager). Best of ``--repeats`` runs of ``--number``
calls, the old and new ways taking turns.

    python benchmarks/call_bookkeeping.py [--device auto] [--number 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Iterator

import torch
from torch import nn

from salmap import models
from salmap.attacks.base import _state_version
from salmap.cli.common import print_table
from salmap.devices import describe_device, resolve_device
from salmap.frozen import frozen, modules_of


def _versions_before(modules: list[nn.Module]) -> tuple[int, ...]:
    """The counters read as the call read them before: a generator over the tables, each tensor
    asked whether it is an inference tensor."""

    def tensors() -> Iterator[torch.Tensor]:
        for m in modules:
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None:
                    yield t

    return tuple(t._version for t in tensors() if not t.is_inference())


def _frozen_before(model: nn.Module, modules: list[nn.Module]) -> None:
    """``frozen`` entered and left as before: ``isinstance`` against ``UninitializedParameter``
    (a metaclass check in Python) and ``requires_grad_`` calls."""
    modes = [m.training for m in modules]
    params = [p for m in modules for p in m._parameters.values()
              if p is not None and not isinstance(p, nn.parameter.UninitializedParameter)]
    flags = [p.requires_grad for p in params]
    try:
        for p, flag in zip(params, flags, strict=True):
            if flag:
                p.requires_grad_(False)
    finally:
        for m, mode in zip(modules, modes, strict=True):
            if m.training != mode:
                m.training = mode
        for p, flag in zip(params, flags, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)


def _enter_and_leave(model: nn.Module, modules: list[nn.Module]) -> None:
    with frozen(model, modules=modules):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="where the models live (auto: CUDA when available); the work is the host's")
    p.add_argument("--number", type=int, default=2000, help="calls per timed run (default 2000)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs, the best kept (default 7)")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    print(f"device {describe_device(device)}, torch {torch.__version__}, 1 thread")
    settings = {
        "lenet": models.build("lenet"),
        "resnet18": models.build("resnet18", num_classes=10, stem="standard"),
    }
    rows = []
    for name, model in settings.items():
        model.to(device).eval()
        modules = modules_of(model)
        pairs = {
            "walk the modules": (lambda m=model: list(m.modules()), lambda m=model: modules_of(m)),
            "read the version counters": (lambda ms=modules: _versions_before(ms), lambda m=model, ms=modules: _state_version(m, ms)),
            "frozen, entered and left": (lambda m=model, ms=modules: _frozen_before(m, ms), lambda m=model, ms=modules: _enter_and_leave(m, ms)),
        }
        for what, (old, new) in pairs.items():
            best = {"old": float("inf"), "new": float("inf")}
            for _ in range(args.repeats):
                for key, fn in (("old", old), ("new", new)):
                    if fn is not None:
                        best[key] = min(best[key], timeit.timeit(fn, number=args.number) / args.number * 1e6)
            rows.append({
                "model": f"{name} ({len(modules)} modules)", "bookkeeping": what,
                "before us": "" if old is None else f"{best['old']:.1f}", "now us": f"{best['new']:.1f}",
                "before / now": "" if old is None else f"{best['old'] / best['new']:.2f}",
            })
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
