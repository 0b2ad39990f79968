"""The model zoo's registry: names to factories, and :func:`build`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (decorator)."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FACTORIES[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Names of the models the zoo can build."""
    _load_zoo()
    return sorted(_FACTORIES)


def _load_zoo() -> None:
    # Importing the modules registers their factories.
    # Defended models ('dae', 'purified', 'block-switch') are zoo models too, so checkpoints round-trip.
    from salmap.defenses import block_switch, denoiser  # noqa: F401
    from salmap.models import lenet, resnet, unet  # noqa: F401


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, e.g. ``build("lenet", in_channels=1, num_classes=10)``.

    The architecture and its arguments are recorded on the model (``salmap_arch``) so that
    :func:`salmap.models.save` can write them to ``model.json``.
    """
    _load_zoo()
    if name not in _FACTORIES:
        close = difflib.get_close_matches(name, list(_FACTORIES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"model must be one of {sorted(_FACTORIES)}, got {name!r}{hint}")
    try:
        model = _FACTORIES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"model {name!r} does not accept arguments {sorted(kwargs)}: {err}") from None
    model.salmap_arch = {"name": name, "kwargs": dict(kwargs)}  # type: ignore[assignment]
    return model
