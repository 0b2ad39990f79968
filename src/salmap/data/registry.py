"""The names of datasets: built-ins (``mnist-sample``) and file kinds (``npz:PATH``).

Each loader module registers its names on import with :func:`register_builtin` or
:func:`register_prefix`; :mod:`salmap.data.loading` imports the loaders, so that this
module never imports one of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from salmap.data.base import Dataset

Loader = Callable[[str, str], Dataset]
_BUILTIN: dict[str, Callable[[str], Dataset]] = {}
_PREFIXED: dict[str, Loader] = {}


def register_builtin(name: str) -> Callable[[Callable[[str], Dataset]], Callable[[str], Dataset]]:
    """Register a dataset that needs no path: ``loader(split) -> Dataset``."""

    def deco(fn: Callable[[str], Dataset]) -> Callable[[str], Dataset]:
        _BUILTIN[name] = fn
        return fn

    return deco


def register_prefix(prefix: str) -> Callable[[Loader], Loader]:
    """Register a file-backed dataset kind ``prefix:PATH``: ``loader(path, split) -> Dataset``."""

    def deco(fn: Loader) -> Loader:
        _PREFIXED[prefix] = fn
        return fn

    return deco


def registered() -> list[str]:
    """Names of the registered built-in datasets and the ``kind:PATH`` forms."""
    return sorted(_BUILTIN) + [f"{p}:PATH" for p in sorted(_PREFIXED)]


def load_registered(name: str, split: str) -> Dataset:
    """The dataset registered under ``name`` (``kind:PATH`` or a built-in), as its loader returns it."""
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    prefix, sep, path = name.partition(":")
    if sep and prefix in _PREFIXED:
        if not path:
            raise ValueError(f"dataset {name!r} needs a path after '{prefix}:'")
        return _PREFIXED[prefix](path, split)
    if name in _BUILTIN:
        return _BUILTIN[name](split)
    close = difflib.get_close_matches(name, list(_BUILTIN), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"dataset must be one of {registered()}, got {name!r}{hint}")
