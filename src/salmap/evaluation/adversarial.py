"""Reading back the adversarial examples a run saved (``--save-adv`` / ``save_adversarial: true``).

Each unit of the run wrote one safetensors shard ``adversarial/<unit>.safetensors``
(losslessly: the float tensors the attack returned) holding, row by row:

``x_adv`` ``(N, C, H, W)``
    the adversarial inputs.
``index`` ``(N,)``
    the sample's index in the dataset split.
``label`` ``(N,)``
    its true class (``-1`` for segmentation samples).
``target`` ``(N,)``
    the target class (``-1`` when untargeted); segmentation shards add ``goal`` ``(N, H, W)``.
``success`` ``(N,)``
    whether the attack reached its goal.

The shard's name says which model and attack: ``m<model>-a<attack>-b<batch>``, the
positions in the run's ``models`` and ``attacks`` lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from salmap.evaluation.files import load_tensors
from salmap.evaluation.store import ADVERSARIAL, RUN_FILE

_SHARD = re.compile(r"^m(\d{3})-a(\d{3})-b(\d{6})\.safetensors$")


def load_adversarial(run_dir: str | Path, model: str | int | None = None,
                     attack: str | int | None = None) -> dict[tuple[str, str], dict[str, Tensor]]:
    """The saved adversarial examples of a run, per ``(model name, attack name)``, shards joined in order.

    Parameters
    ----------
    run_dir: the run's output folder.
    model, attack: only this model / attack (its name in the run, or its position).

    Returns
    -------
    ``{(model, attack): {"x_adv", "index", "label", "target", "success"[, "goal"]}}``.

    Examples
    --------
    >>> saved = load_adversarial("runs/eval")                     # doctest: +SKIP
    >>> saved[("lenet", "fgsm(eps=0.1)")]["x_adv"].shape            # doctest: +SKIP
    torch.Size([1000, 1, 28, 28])
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ValueError(f"run_dir {str(folder)!r} is not a folder (a run's output folder was expected)")
    shards = sorted(p for p in (folder / ADVERSARIAL).glob("*.safetensors") if _SHARD.match(p.name)) \
        if (folder / ADVERSARIAL).is_dir() else []
    if not shards:
        raise ValueError(f"run_dir {str(folder)!r} holds no saved adversarial examples "
                         "(run with --save-adv or save_adversarial: true)")
    try:
        settings = json.loads((folder / RUN_FILE).read_text())["settings"]
        models = [m["name"] for m in settings["models"]]
        attacks = [a["name"] for a in settings["attacks"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"run_dir {str(folder)!r} has no readable {RUN_FILE}") from None
    parts: dict[tuple[str, str], list[dict[str, Tensor]]] = {}
    for path in shards:
        m_pos, a_pos, _ = (int(g) for g in _SHARD.match(path.name).groups())  # type: ignore[union-attr]
        key = (models[m_pos], attacks[a_pos])
        if model is not None and model not in (key[0], m_pos):
            continue
        if attack is not None and attack not in (key[1], a_pos):
            continue
        parts.setdefault(key, []).append(load_tensors(path, "adversarial examples file"))
    return {key: {name: torch.cat([p[name] for p in found]) for name in found[0]} for key, found in parts.items()}


__all__ = ["load_adversarial"]
