"""The names of datasets: built-ins (``mnist-sample``) and file kinds (``npz:PATH``).

Each loader module registers its names on import with :func:`register_builtin` or
:func:`register_prefix`; :mod:`salmap.data.loading` imports the loaders, so that this
module never imports one of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from salmap.data.base import Dataset

Loader = Callable[[str, str], Dataset]
_BUILTIN: dict[str, Callable[[str], Dataset]] = {}
_PREFIXED: dict[str, Loader] = {}
_FILE_KINDS: set[str] = set()  # kinds whose PATH is a file (npz:), not a folder


def register_builtin(name: str) -> Callable[[Callable[[str], Dataset]], Callable[[str], Dataset]]:
    """Register a dataset that needs no path: ``loader(split) -> Dataset``."""

    def deco(fn: Callable[[str], Dataset]) -> Callable[[str], Dataset]:
        _BUILTIN[name] = fn
        return fn

    return deco


def register_prefix(prefix: str, file: bool = False) -> Callable[[Loader], Loader]:
    """Register a file-backed dataset kind ``prefix:PATH``: ``loader(path, split) -> Dataset``;
    ``file``: its PATH names a file, else a folder."""

    def deco(fn: Loader) -> Loader:
        _PREFIXED[prefix] = fn
        (_FILE_KINDS.add if file else _FILE_KINDS.discard)(prefix)
        return fn

    return deco


def registered() -> list[str]:
    """Names of the registered built-in datasets and the ``kind:PATH`` forms."""
    return sorted(_BUILTIN) + [f"{p}:PATH" for p in sorted(_PREFIXED)]


def path_problem(name: str) -> str | None:
    """What is wrong with the path of a ``kind:PATH`` dataset name before its loader opens it (``the
    folder /x does not exist``, ``/x is a file, not a folder``), or None (also for other names)."""
    prefix, sep, path = name.partition(":")
    if not sep or prefix not in _PREFIXED or not path:
        return None
    where, what = Path(path), "file" if prefix in _FILE_KINDS else "folder"
    if not where.exists():
        return f"the {what} {where} does not exist"
    if where.is_dir() != (what == "folder"):
        return f"{where} is a {'folder' if where.is_dir() else 'file'}, not a {what}"
    return None


def load_registered(name: str, split: str) -> Dataset:
    """The dataset registered under ``name`` (``kind:PATH`` or a built-in), as its loader returns it."""
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    prefix, sep, path = name.partition(":")
    if sep and prefix in _PREFIXED:
        if not path:
            raise ValueError(f"dataset {name!r} needs a path after '{prefix}:'")
        if problem := path_problem(name):
            raise ValueError(f"dataset {name!r}: {problem}")
        return _PREFIXED[prefix](path, split)
    if name in _BUILTIN:
        return _BUILTIN[name](split)
    close = difflib.get_close_matches(name, list(_BUILTIN), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"dataset must be one of {registered()}, got {name!r}{hint}")
