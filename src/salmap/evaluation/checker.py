"""Collecting every problem of a run description, each with its key path (``attacks[1].params.eps``)."""

from __future__ import annotations

import difflib
from typing import Any

from salmap import _repr


class Checker:
    """Collects problems with their key paths instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def unknown_keys(self, path: str, value: dict[str, Any], allowed: set[str]) -> None:
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(join(path, str(key)), f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")

    def mapping(self, path: str, value: Any) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.add(path or "<top>", f"must be a mapping, got {kind_of(value)} {short(value)}")
        return None

    def string(self, path: str, value: Any, default: str | None = None, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.add(path, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"must be a non-empty string, got {kind_of(value)} {short(value)}")
            return default
        return value

    def integer(self, path: str, value: Any, default: int | None, low: int | None = None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"must be an integer, got {kind_of(value)} {short(value)}")
            return default
        if low is not None and value < low:
            self.add(path, f"must be at least {low}, got {value}")
            return default
        return value

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(path, f"must be true or false, got {kind_of(value)} {short(value)}")
            return default
        return value

    def choice(self, path: str, value: Any, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.add(path, f"must be one of {', '.join(choices)}, got {short(value)}")
            return default
        return str(value)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "the string", bool: "the boolean"}.get(type(value), type(value).__name__)


def short(value: Any) -> str:
    return _repr.short(value, limit=60)


def items(check: Checker, section: str, raw: Any, required: bool) -> list[tuple[str, dict[str, Any]]]:
    """The mappings of a list section with their paths (``attacks[0]``); problems recorded."""
    if raw is None:
        if required:
            check.add(section, "is required (a list with at least one entry)")
        return []
    if not isinstance(raw, list):
        check.add(section, f"must be a list, got {kind_of(raw)} {short(raw)}")
        return []
    if required and not raw:
        check.add(section, "must hold at least one entry")
    found = []
    for i, item in enumerate(raw):
        path = f"{section}[{i}]"
        if (m := check.mapping(path, item)) is not None:
            found.append((path, m))
    return found


def labels_unique(check: Checker, section: str, labels: list[str]) -> None:
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label in seen:
            check.add(f"{section}[{i}].name", f"{label!r} is used twice in {section}; names must be unique")
        seen.add(label)


__all__ = ["Checker", "items", "join", "kind_of", "labels_unique", "short"]
