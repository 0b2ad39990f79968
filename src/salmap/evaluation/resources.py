"""The models and the dataset of a run, opened once and handed from validation to the plan.

Validation (:mod:`salmap.evaluation.config`) opens every checkpoint and the dataset to
check them; it keeps what it opened in a :class:`Resources`, and the plan and the
execute step use those same objects: each model is loaded once per process per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from salmap import data as datasets
from salmap import models as zoo

if TYPE_CHECKING:
    from salmap.evaluation.config import RunConfig

_BUILTIN_CACHE: dict[tuple[str, str], Any] = {}


def load_split(name: str, split: str) -> datasets.Dataset:
    """A dataset split; built-in ones (no ``kind:PATH``) are decoded once per process."""
    if ":" in name:
        return datasets.load_dataset(name, split)
    key = (name, split)
    if key not in _BUILTIN_CACHE:
        _BUILTIN_CACHE[key] = datasets.load_dataset(name, split)
    return _BUILTIN_CACHE[key]  # type: ignore[no-any-return]


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
    """One opened model: its module (in eval mode), metadata and bounds."""

    path: str
    module: nn.Module
    meta: dict[str, Any]
    bounds: tuple[Any, Any]


def load_model(path: str, device: str = "cpu") -> LoadedModel:
    """Open the model at ``path`` (checkpoint folder, TorchScript/.pt2 file or module:factory)."""
    module, meta = zoo.load_with_meta(path)
    return LoadedModel(path, module.to(device).eval(), meta, bounds_from_meta(meta))


@dataclass
class Resources:
    """What a run works on: the dataset split and one :class:`LoadedModel` per ``cfg.models`` entry."""

    dataset: datasets.Dataset
    models: list[LoadedModel] = field(default_factory=list)
    device: str = "cpu"

    def to(self, device: str) -> Resources:
        """The same resources with the models on ``device`` (moved in place)."""
        if device != self.device:
            for m in self.models:
                m.module = m.module.to(device)
            self.device = device
        return self


def open_resources(cfg: RunConfig, device: str = "cpu") -> Resources:
    """Open the dataset and every model of ``cfg`` (errors name the entry that failed)."""
    ds = load_split(cfg.data.name, cfg.data.split)
    loaded = []
    for i, m in enumerate(cfg.models):
        try:
            loaded.append(load_model(m.path, device))
        except (ValueError, OSError, RuntimeError) as err:
            raise ValueError(f"models[{i}].path: {err}") from None
    return Resources(ds, loaded, device)


__all__ = ["LoadedModel", "Resources", "bounds_from_meta", "load_model", "load_split", "open_resources"]
