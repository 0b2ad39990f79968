"""Reading a class's parameters: its constructor's signature and its NumPy-style docstring.

:func:`describe_params` turns each constructor parameter into a :class:`~salmap._params.Param`
(annotation, default, the ``name: help`` line of the ``Parameters`` section) plus what a
decorator adds (choices, ranges, named values). Nothing here runs the class.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from salmap._params import FIXED, Param

_PLAIN_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str}
_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+]?[\w.]+)\s*,\s*([-+]?[\w.]+)\s*([\])])\s*$")


def describe_params(
    cls: type,
    choices: Mapping[str, Iterable[Any]],
    ranges: Mapping[str, str],
    named: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None,
) -> tuple[Param, ...]:
    """The constructor's parameters (less the model and bounds), with help from the docstring.

    ``named`` gives object parameters (a tensor, a function) names a flag or run file can
    use: ``{"region": {"all": lambda: None, "outside": lambda: outside()}}``.
    """
    named = named or {}
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    helps: dict[str, str] = {}
    for klass in cls.__mro__:  # a subclass inherits the help of parameters it does not describe
        for doc in (klass.__doc__, getattr(klass.__dict__.get("__init__"), "__doc__", None)):
            for key, text in docstring_params(doc or "").items():
                if text and not helps.get(key):
                    helps[key] = text
    out: list[Param] = []
    names = set()
    for p in list(signature.parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in FIXED:
            continue
        names.add(p.name)
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else None
        types, nullable, literal = _read_annotation(annotation, p.default)
        allowed = tuple(choices[p.name]) if p.name in choices else literal
        values = dict(named[p.name]) if p.name in named else None
        if values is not None:  # the names are the plain form of an object parameter
            types = types if str in types else (*types, str)
            allowed = tuple(dict.fromkeys((*(allowed or ()), *values)))
        interval = parse_interval(ranges[p.name], f"ranges[{p.name!r}]") if p.name in ranges else None
        required = p.default is inspect.Parameter.empty
        out.append(Param(
            name=p.name,
            type=_primary(types),
            default=None if required else p.default,
            required=required,
            nullable=nullable,
            choices=allowed,
            interval=interval,
            help=helps.get(p.name, ""),
            types=types,
            named=values,
        ))
    for key in list(choices) + list(ranges) + list(named):
        if key not in names:
            raise ValueError(f"{cls.__name__} has no parameter {key!r} (named in choices, ranges or named)")
    return tuple(out)


def _read_annotation(annotation: Any, default: Any) -> tuple[tuple[type, ...], bool, tuple[Any, ...] | None]:
    """(plain types, accepts None, Literal values) from an annotation (string or object)."""
    text = annotation if isinstance(annotation, str) else _annotation_text(annotation)
    if text is None:
        for t in (bool, int, float, str):
            if isinstance(default, t):
                return (t,), False, None
        return (), default is None, None
    parts = [part.strip() for part in _split_union(text)]
    nullable = "None" in parts or default is None
    parts = [part for part in parts if part != "None"]
    literal = None
    for part in parts:
        m = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", part)
        if m:
            literal = tuple(_literal_values(m.group(1)))
    found = {type(v) for v in literal} if literal else {_PLAIN_TYPES.get(part) for part in parts}
    if float in found:
        found.discard(int)  # an int is accepted where a float is
    # conversion order: a string reading as a number becomes the number when both are allowed
    return tuple(t for t in (bool, int, float, str) if t in found), nullable, literal


def _primary(types: tuple[type, ...]) -> type | None:
    """The type a flag shows: the string when a union takes one (it reads numbers too)."""
    if not types:
        return None
    return str if str in types else types[0]


def _annotation_text(annotation: Any) -> str | None:
    if annotation is None:
        return None
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _split_union(text: str) -> list[str]:
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if len(parts) == 1:
        m = re.fullmatch(r"\s*Optional\[(.*)\]\s*", text)
        if m:
            return [m.group(1), "None"]
    return parts


def _literal_values(text: str) -> list[Any]:
    values: list[Any] = []
    for raw in text.split(","):
        raw = raw.strip()
        if raw[:1] in "'\"":
            values.append(raw[1:-1])
        elif raw in ("True", "False"):
            values.append(raw == "True")
        else:
            try:
                values.append(int(raw))
            except ValueError:
                values.append(float(raw))
    return values


def parse_interval(text: str, what: str = "interval") -> tuple[float, float, bool, bool]:
    """``"(0, 1]"`` -> ``(0.0, 1.0, False, True)``; ``inf`` allowed as a bound."""
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"{what} must look like '(0, 1]' or '[0, inf)', got {text!r}")
    return float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]"


def docstring_params(doc: str) -> dict[str, str]:
    """Help per parameter from a NumPy-style ``Parameters`` section.

    Accepts ``name: text`` (text may continue on indented lines) and ``name : type``
    followed by an indented description.
    """
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    out: dict[str, str] = {}
    inside = False
    current: str | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "Parameters" and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            inside = True
            continue
        if not inside:
            continue
        if set(stripped) == {"-"}:
            continue
        if stripped and not line.startswith(" ") and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            break  # the next section
        m = re.match(r"^(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            text = m.group(2).strip()
            # "name : float" (numpy style) carries the type, not the help
            out[current] = "" if re.fullmatch(r"[\w\[\], .|]+", text) and " " not in text.strip() else text
        elif current and stripped:
            out[current] = (out[current] + " " + stripped).strip()
        elif not stripped:
            current = None if not out.get(current or "", "") else current
    return {k: " ".join(v.split()) for k, v in out.items()}


def first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).splitlines()[0].strip() if doc and doc.strip() else ""


__all__ = ["describe_params", "docstring_params", "first_line", "parse_interval"]
