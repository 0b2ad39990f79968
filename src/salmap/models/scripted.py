"""TorchScript checkpoint folders: a model no salmap architecture describes, saved so that it loads without code.

A checkpoint folder normally holds ``weights.safetensors`` and a ``model.json`` naming the zoo
architecture the weights fit. A model built elsewhere (a TorchScript file, a ``module:factory``'s or
an exported model, or a defense put around one, see :mod:`salmap.defenses.saving`) has no such
architecture; it is saved as ``model.ts`` (TorchScript: tensors and TorchScript code, read by torch's
own loader, which unpickles nothing and imports no Python module) beside a ``model.json`` holding
``"format": "torchscript"`` instead of ``arch``. :func:`salmap.models.load` reads such a folder
like any other, so every command loads it without ``--allow-code`` or ``--trust-model``.

A model that is not TorchScript yet is compiled with ``torch.jit.script`` (its control flow is
kept) or, where that fails, traced on example inputs (Python control flow that depends on the
input's values is then fixed at those inputs); either way its outputs are compared with the
eager model's on the check inputs before anything is written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salmap.models.metadata import check_meta

#: ``model.json``'s ``format`` for a TorchScript checkpoint folder, and the file holding the model
TORCHSCRIPT = "torchscript"
SCRIPT_FILE = "model.ts"
#: how a model became TorchScript: it was already, ``torch.jit.script`` compiled it, or it was traced
ALREADY, SCRIPTED, TRACED = "torchscript", "scripted", "traced"


def to_torchscript(model: nn.Module, check: Tensor, name: str = "model", batch_size: int = 100,
                   ) -> tuple[torch.jit.ScriptModule, str]:
    """``model`` as TorchScript, checked against the eager model on ``check``.

    Parameters
    ----------
    model: the model (in eval mode); a ``ScriptModule`` is returned as it is.
    check: inputs ``(N, ...)`` on the model's device; the first two are the tracing example. The
        TorchScript model's outputs must equal the eager ones on all of them (batches of
        ``batch_size`` and a single sample): same argmax, values within ``1e-4`` relative.
    name: how errors name the model (``--model m.py:net``).

    Returns
    -------
    (scripted, how): ``how`` is ``"torchscript"``, ``"scripted"`` or ``"traced"``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return model, ALREADY
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings: the check below decides
        try:
            scripted, how = torch.jit.script(model), SCRIPTED
        except Exception:  # noqa: BLE001 -- most Python models do not script; tracing is the fallback
            try:
                scripted, how = torch.jit.trace(model, check[:2], check_trace=False), TRACED
            except Exception as err:  # noqa: BLE001 -- reported with the model's name
                first = " ".join(str(err).split())[:160]
                raise ValueError(f"{name} cannot be saved as TorchScript: torch.jit.script and torch.jit.trace "
                                 f"both fail ({type(err).__name__}: {first})") from None
    check_same(model, scripted, check, name, how, batch_size)
    return scripted, how


@torch.no_grad()
def check_same(model: nn.Module, scripted: nn.Module, x: Tensor, name: str, how: str = "saved",
               batch_size: int = 100) -> None:
    """``ValueError`` unless ``scripted`` gives ``model``'s outputs on ``x`` (same argmax, within ``1e-4`` relative)."""
    for xb in [x[:1], *x.split(batch_size)]:
        want, got = model(xb), scripted(xb)
        if not (isinstance(want, Tensor) and isinstance(got, Tensor)) or want.shape != got.shape:
            raise ValueError(f"{name} {how} to TorchScript returns {_shape(got)}, the model {_shape(want)}")
        gap = float((want - got).abs().max()) if want.numel() else 0.0
        scale = 1.0 + float(want.abs().max()) if want.numel() else 1.0
        if gap > 1e-4 * scale or not torch.equal(want.argmax(dim=-1), got.argmax(dim=-1)):
            raise ValueError(
                f"{name} {how} to TorchScript does not compute what the model computes on the check images "
                f"(largest difference {gap:.3g}): its forward depends on the input's values in Python; "
                "save it with torch.jit.script yourself and pass the TorchScript file"
            )


def _shape(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def save_torchscript(model: torch.jit.ScriptModule, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save a TorchScript model as a checkpoint folder (``model.ts`` + ``model.json``); returns the folder.

    ``meta`` holds what :func:`salmap.models.save` stores (``input_shape``, ``bounds``,
    ``class_names``, ``metrics``, ...) but no ``arch`` and no ``normalization``: the TorchScript
    model is the whole computation, normalisation included. Use :func:`to_torchscript` first for
    a model that is not TorchScript yet.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"model must be a torch.jit.ScriptModule (see to_torchscript), got {type(model).__name__}")
    meta = {k: v for k, v in (meta or {}).items() if k not in ("arch", "normalization")}
    meta.update(format=TORCHSCRIPT, format_version=1, schema_version=1)
    check_meta(meta, Path(folder) / "model.json")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (SCRIPT_FILE + ".tmp")
    torch.jit.save(model, str(part))  # loading maps it to the CPU
    part.replace(folder / SCRIPT_FILE)
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_torchscript_folder(folder: Path) -> nn.Module:
    """The model of a TorchScript checkpoint folder (its ``model.json`` read already), in eval mode, on the CPU."""
    path = folder / SCRIPT_FILE
    if not path.is_file():
        raise ValueError(f"checkpoint {folder} declares format {TORCHSCRIPT!r} but has no {SCRIPT_FILE}")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # noqa: BLE001 -- a damaged or foreign file
        raise ValueError(f"model file {path} is not a readable TorchScript file: {err}") from None


__all__ = ["ALREADY", "SCRIPTED", "SCRIPT_FILE", "TORCHSCRIPT", "TRACED", "check_same", "load_torchscript_folder",
           "save_torchscript", "to_torchscript"]
