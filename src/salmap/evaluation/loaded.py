"""What a run works on once opened: :class:`LoadedModel` and :class:`Resources`.

Kept apart from opening and checking them (:mod:`salmap.evaluation.resources`) so that the
run settings (:mod:`salmap.evaluation.settings`) can name them without importing the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from salmap import data as datasets


def bounds_from_meta(meta: dict[str, Any]) -> tuple[Any, Any]:
    """The valid input range recorded in a checkpoint's metadata (default ``(0, 1)``).

    Scalars come back as floats; per-channel bounds (lists) are kept as they are.
    """
    b = meta.get("bounds") or (0.0, 1.0)
    low, high = b[0], b[1]
    return (float(low) if isinstance(low, (int, float)) else low,
            float(high) if isinstance(high, (int, float)) else high)


@dataclass
class LoadedModel:
    """One opened model: its module (in eval mode), metadata, bounds and task.

    ``task`` is ``"classification"`` (``(B, K)`` outputs) or ``"segmentation"``
    (``(B, K, H, W)``), read from one sample of the run's data; ``None`` when not known.
    ``judge`` is a classifier that judges the adversarial examples crafted on ``module``
    (``salmap defend``: the defended model, for examples crafted on the undefended model or
    on the adaptive attack's model); its predictions go into the rows as ``judge_before``
    and ``judge_after`` (:mod:`salmap.evaluation.execute`). None: no judge.
    """

    path: str
    module: nn.Module
    meta: dict[str, Any]
    bounds: tuple[Any, Any]
    task: str | None = None
    judge: nn.Module | None = None


@dataclass
class Resources:
    """What a run works on: the dataset split and one :class:`LoadedModel` per ``cfg.models`` entry.

    A model that names code (``module:factory``) is ``None`` until :func:`open_resources`.
    """

    dataset: datasets.Dataset
    models: list[LoadedModel | None] = field(default_factory=list)
    device: str = "cpu"

    def to(self, device: str) -> Resources:
        """The same resources with the models on ``device`` (moved in place)."""
        if device != self.device:
            for m in self.models:
                if m is not None:
                    m.module = m.module.to(device)
                    if m.judge is not None:
                        m.judge = m.judge.to(device)
            self.device = device
        return self


__all__ = ["LoadedModel", "Resources", "bounds_from_meta"]
