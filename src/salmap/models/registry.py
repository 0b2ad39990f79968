"""The model zoo's registry: names to factories, and :func:`build`.

The zoo's own architectures (lenet, resnet18/34, unet) register from their modules, which
``salmap.models`` imports (so this module imports none of them).
Models built elsewhere register themselves from their own files with :func:`register`;
``models/`` never imports the packages above it. So that such a model is known before any
code of its package has been imported (``models.load`` of a saved defended model, in a
fresh process), its distribution names the modules that register in the entry-point group
``salmap.models`` (salmap's own ``pyproject.toml`` names :mod:`salmap.defenses`' denoiser
and block-switch modules); they are imported the first time the zoo is read
(:func:`available`, :func:`build`), so importing salmap still imports no defense code. Code
may also add a *provider* with :func:`add_provider`: a function, run once at that moment,
that imports the modules which register. Entry points come from installed distributions and
providers from code, never from a checkpoint: a file can only pick among registered names.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)
#: the entry-point group naming modules whose import registers more zoo models
ENTRY_POINT_GROUP = "salmap.models"

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
def _entry_point_models() -> None:
    """Import the modules the ``salmap.models`` entry points name (they register on import)."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not break the zoo: say so and go on
            logger.warning("salmap: model plugin %r could not be loaded: %s", ep.name, err)


#: functions that register more models, not run yet (see :func:`add_provider`).
_PROVIDERS: list[Callable[[], None]] = [_entry_point_models]


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


def add_provider(provider: Callable[[], None]) -> None:
    """Add a function that registers more models (by importing their modules); it runs once,
    the first time the zoo is read."""
    if not callable(provider):
        raise ValueError(f"provider must be a callable, got {type(provider).__name__}")
    _PROVIDERS.append(provider)


def _load_zoo() -> None:
    # The zoo's own modules registered when salmap.models was imported; providers run now.
    while _PROVIDERS:
        provider = _PROVIDERS.pop(0)  # popped first: a provider that reads the zoo does not run itself again
        try:
            provider()
        except BaseException:
            _PROVIDERS.insert(0, provider)  # tried again the next time the zoo is read
            raise


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
