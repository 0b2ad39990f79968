"""What identifies a run's model in its fingerprint, and what changed between two runs of a folder.

A model file or checkpoint folder is identified by the content of its files (a retrained
checkpoint, an edited TorchScript or ``.pt2`` file is another model). A ``module:factory`` has no
file of its own: it is identified by the model it builds, a digest of its parameters and buffers
(:func:`module_digest`), and by its code, a digest of the source files of the factory's module and
of the modules defining the built model's layers, plus the code of its TorchScript or ``torch.fx``
parts (:func:`code_digest`). So a resumed run whose factory, weights file or layer code was edited
is refused (or, with ``--overwrite``, started afresh) instead of reusing the old model's results;
:func:`what_changed` names what differs in the refusal.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salmap.evaluation.sources import is_factory

#: run settings that are not part of the fingerprint (where and how the run is written)
UNHASHED = ("output", "device", "report")


def file_hash(path: Path) -> str:
    """A short hash of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def module_digest(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names and bytes, in ``state_dict`` order).

    Each tensor's bytes are hashed where they lie (a CPU tensor is not copied unless it is not
    contiguous; a GPU tensor is copied to the host one at a time).
    """
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        if not isinstance(value, Tensor):  # a module's extra state
            digest.update(repr(value).encode())
            continue
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_quantized:
            t = t.dequantize()
        if t.device.type == "meta":
            digest.update(repr((t.dtype, tuple(t.shape))).encode())
            continue
        t = t.resolve_conj().resolve_neg().cpu().contiguous()
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # (the buffer itself: no bytes copy)
    return digest.hexdigest()[:16]


def code_digest(spec: str, module: nn.Module) -> str:
    """A short hash of the code behind a ``module:factory``'s model: the source files of the factory's
    module and of every module defining one of ``module``'s layers (but torch's and salmap's own), by
    module name, and
    the code of its TorchScript and ``torch.fx`` layers."""
    names = set()
    codes = []
    for layer in module.modules():
        names.add(type(layer).__module__)
        if isinstance(layer, (torch.jit.ScriptModule, torch.fx.GraphModule)):
            try:
                codes.append(str(layer.code))
            except (AttributeError, RuntimeError):  # a scripted layer without a forward
                continue
    digest = hashlib.sha256()
    names = {n for n in names if n.partition(".")[0] not in ("torch", "builtins", "salmap")}  # (their releases)
    for name in sorted({spec.partition(":")[0], *names}):
        file = getattr(sys.modules.get(name), "__file__", None)
        digest.update(name.encode())
        if file and Path(file).is_file():
            digest.update(file_hash(Path(file)).encode())
    for code in codes:
        digest.update(code.encode())
    return digest.hexdigest()[:16]


def model_hash(source: str, module: nn.Module | None = None) -> str | dict[str, str]:
    """What identifies a run's model: the hash of its file (or of a folder's files); for a
    ``module:factory`` opened as ``module``, ``{"factory", "weights", "code"}`` (see the module
    docstring); any other source, its name."""
    if module is not None and is_factory(source):
        return {"factory": source, "weights": module_digest(module), "code": code_digest(source, module)}
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return hashlib.sha256("".join(file_hash(p) for p in files).encode()).hexdigest()[:16]
    if path.is_file():
        return file_hash(path)
    return source


def what_changed(previous: dict[str, Any], settings: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """What differs between an earlier run (its ``run.json``: ``settings`` and ``facts``) and this
    one: the models' files, weights or code, the data, and the paths of the settings that differ."""
    settings, facts = json.loads(json.dumps([settings, facts], default=str))  # (as run.json holds them)
    found = []
    paths = [str(m.get("path", "")) for m in settings.get("models") or [] if isinstance(m, dict)]
    before: dict[str, Any] = previous["facts"] if isinstance(previous.get("facts"), dict) else {}
    for i, (old, new) in enumerate(zip(before.get("models") or [], facts.get("models") or [], strict=False)):
        label = f"models[{i}] ({paths[i] if i < len(paths) else '?'})"
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            if old.get("weights") != new.get("weights"):
                found.append(f"the weights of the model {label} builds (a factory that draws them at random "
                             "without a seed builds another model on every call)")
            if old.get("code") != new.get("code"):
                found.append(f"the source code of {label}")
        else:
            found.append(f"the model {label}" if isinstance(new, dict) else f"the files of {label}")
    for key, what in (("data", "the data"), ("indices", "the selected samples")):
        if key in before and before.get(key) != facts.get(key):
            found.append(what)
    old_settings = previous.get("settings")
    if isinstance(old_settings, dict):
        differ = _differ({k: v for k, v in old_settings.items() if k not in UNHASHED},
                         {k: v for k, v in settings.items() if k not in UNHASHED})
        found.extend(d for d in differ if d != "name" or len(differ) == 1)  # (a name made of the others)
    return found


def _differ(old: Any, new: Any, path: str = "") -> list[str]:
    """The key paths at which two JSON-like values differ (``attacks[0].params.eps``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [d for k in keys for d in _differ(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _differ(a, b, f"{path}[{i}]")]
    return [] if old == new else [path or "settings"]


__all__ = ["code_digest", "file_hash", "model_hash", "module_digest", "what_changed"]
