"""Where a run's model comes from: a path (relative to the run file) or Python code (``module:factory``)."""

from __future__ import annotations

from pathlib import Path


def resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def is_factory(path: str, base: Path | None = None) -> bool:
    """Whether a model path names Python code (``package.module:factory``) rather than a file."""
    if ":" not in path or path.startswith((".", "/", "~")):
        return False
    if Path(path).exists() or (base is not None and resolve(base, path).exists()):
        return False
    module, _, attr = path.partition(":")
    return all(part.isidentifier() for part in module.split(".")) and attr.isidentifier()


__all__ = ["is_factory", "resolve"]
