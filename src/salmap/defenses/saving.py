"""Saving a defended model, and getting the trained defense back when a run resumes.

A defense whose architecture salmap knows (a defense of a zoo model: ``model.json`` names its
architecture) is saved as a checkpoint folder (:func:`salmap.models.save`). A defense of any other
classifier (a TorchScript file, a ``module:factory``'s or a ``torch.export`` model, or a zoo model
behind ``--mean/--std``) is saved as a TorchScript checkpoint folder (:mod:`salmap.models.scripted`):
the denoiser in front of the classifier for ``dae``, the fine-tuned copy for ``adv-train
--fine-tune``. Either folder loads with :func:`salmap.models.load` without running code named by a
file. Block switching rebuilds the architecture as channels, so it needs a zoo architecture.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salmap import models
from salmap.defenses.denoiser import Purified
from salmap.frozen import mode_is_fixed, set_eval
from salmap.models.normalized import Normalized, unwrap
from salmap.models.scripted import (
    ALREADY,
    TORCHSCRIPT,
    check_same,
    save_torchscript,
    to_torchscript,
)

#: the defenses that rebuild the model's zoo architecture (``model.json`` ``arch``) as channels
NEEDS_ARCH = ("block-switch", "dae+block-switch")
#: the defenses a model without a zoo architecture can have
WITHOUT_ARCH = "dae or adv-train --fine-tune"


def check_defensible(kind: str, meta: dict[str, Any], name: str = "model", fine_tune: bool = False,
                     model: nn.Module | None = None) -> None:
    """``ValueError`` when defense ``kind`` needs a zoo architecture that ``meta`` (the model's
    ``model.json``; empty for a TorchScript file, factory or export) does not name, or when
    ``fine_tune`` would train ``model`` and it is a ``torch.export`` module (whose mode is fixed)."""
    if fine_tune and model is not None and any(mode_is_fixed(m) for m in model.modules()):
        raise ValueError(
            f"{name} is a torch.export model, whose train/eval mode was fixed when it was exported: "
            "adv-train --fine-tune cannot train it; defend it with dae, or pass its TorchScript file or module:factory"
        )
    if meta.get("arch"):
        return
    if kind in NEEDS_ARCH:
        raise ValueError(
            f"{name} has no salmap architecture (model.json arch) for {kind} to split into channels; "
            f"a TorchScript file, module:factory or .pt2 model can be defended with {WITHOUT_ARCH}"
        )
    if kind == "adv-train" and not fine_tune:
        raise ValueError(
            f"{name} has no salmap architecture (model.json arch) to train from scratch: pass --fine-tune "
            "to adversarially train a copy of its own weights"
        )


def base_script(model: nn.Module, check: Tensor, name: str = "model") -> tuple[nn.Module, str]:
    """The classifier to put in a TorchScript defense, and how it became TorchScript.

    A TorchScript model under salmap's wrappers (``Normalized``, ``SelectOutput``: tensor
    operations that trace exactly) is kept as it is (``"torchscript"``); any other model is
    scripted or traced and checked on ``check`` (see :func:`~salmap.models.scripted.to_torchscript`).
    ``ValueError`` naming ``name`` when it cannot be made TorchScript.
    """
    if isinstance(unwrap(model), torch.jit.ScriptModule):
        return model, ALREADY
    return to_torchscript(model, check, name)


def trainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to train (adversarial fine-tuning), ``model`` left as it was.

    A copied ``ScriptModule``'s parameters come out of ``copy.deepcopy`` as non-leaf tensors,
    which no optimiser takes: they are detached in place (same values, same ``requires_grad``).
    """
    copied = copy.deepcopy(model)
    for param in copied.parameters():
        if not param.is_leaf:
            param.detach_().requires_grad_(True)
    return copied


def needs_script(defended: nn.Module, meta: dict[str, Any] | None = None) -> bool:
    """Whether ``defended`` has no zoo architecture for :func:`salmap.models.save` (and is saved as TorchScript)."""
    inner = defended.model if isinstance(defended, Normalized) else defended
    return not ((meta or {}).get("arch") or getattr(inner, "salmap_arch", None))


def save_defended(defended: nn.Module, folder: str | Path, meta: dict[str, Any], check: Tensor,
                  name: str = "model", base: nn.Module | None = None) -> Path:
    """Save a defended classifier as a checkpoint folder, as TorchScript when it has no zoo architecture.

    Parameters
    ----------
    defended: the defended model (in eval mode), e.g. ``Purified(model, denoiser)``.
    folder: the checkpoint folder to write.
    meta: ``model.json``'s content (``metrics``, ``defense``, ``bounds``, ...). For a TorchScript
        folder the normalisation is part of the saved computation: ``meta["normalization"]``
        moves to ``meta["defense"]["normalization_inside"]``, and a :class:`Purified`'s denoiser
        architecture is recorded as ``meta["defense"]["denoiser"]`` (see :func:`restore`).
    check: inputs the TorchScript model must classify exactly as ``defended`` does.
    name: how errors name the undefended model.
    base: a :class:`Purified`'s classifier as TorchScript, when the caller made it already with
        :func:`base_script` on the same ``check`` (``salmap defend`` does, before training): it is
        not converted again. None: converted here.

    Examples
    --------
    >>> save_defended(Purified(torch.jit.load("net.pt"), dae), "runs/dae", {}, check=x_test)  # doctest: +SKIP
    >>> models.load("runs/dae")              # a TorchScript model: no code is imported   # doctest: +SKIP
    """
    if not needs_script(defended, meta):
        return models.save(defended, folder, meta)
    meta = dict(meta)
    defense = dict(meta.get("defense") or {})
    if meta.get("normalization"):
        defense["normalization_inside"] = meta.pop("normalization")
    if isinstance(defended, Purified):
        inner = base if base is not None else base_script(defended.model, check, name)[0]
        arch = getattr(defended.denoiser, "salmap_arch", None)
        if arch:
            defense["denoiser"] = arch
        scripted, _ = to_torchscript(Purified(inner, defended.denoiser), check, f"the defense of {name}")
        # (checked against the defense around the scripted base above: here against the eager one)
        check_same(defended, scripted, check, f"the defense of {name}", "saved")
    else:  # (to_torchscript checks the scripted model against defended itself)
        scripted, _ = to_torchscript(defended, check, f"the defense of {name}")
    meta["defense"] = defense
    return save_torchscript(scripted, folder, meta)


def restore(folder: str | Path, base: nn.Module) -> nn.Module:
    """The defended model saved in ``folder`` by :func:`save_defended`, for ``base`` (the undefended model).

    A checkpoint folder loads as it is. From a TorchScript folder the eager defense is rebuilt, so
    that a resumed evaluation attacks exactly what the first run attacked: ``Purified(base, denoiser)``
    with the saved denoiser's weights, or a copy of ``base`` with the fine-tuned weights. On ``base``'s device.
    """
    loaded, meta = models.load_with_meta(folder)
    device = next((p.device for p in base.parameters()), torch.device("cpu"))
    if meta.get("format") != TORCHSCRIPT:
        return loaded.to(device)
    state = loaded.state_dict()
    arch = (meta.get("defense") or {}).get("denoiser")
    if arch:
        denoiser = models.build(arch["name"], **arch.get("kwargs", {}))
        _load_saved(denoiser, {k.removeprefix("denoiser."): v for k, v in state.items() if k.startswith("denoiser.")})
        return Purified(base, set_eval(denoiser.to(device)))
    copied = trainable_copy(base)
    _load_saved(copied, state)
    return set_eval(copied.to(device))


def _load_saved(module: nn.Module, state: dict[str, Tensor]) -> None:
    # A TorchScript state dict also lists non-persistent buffers (a denoiser's per-channel bounds),
    # which the eager module does not save: only its own entries are loaded, every one of them.
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in own})


__all__ = ["NEEDS_ARCH", "WITHOUT_ARCH", "base_script", "check_defensible", "needs_script", "restore",
           "save_defended", "trainable_copy"]
