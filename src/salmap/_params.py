"""Parameters of registered attacks and explainers, read from a class's signature and docstring.

:class:`Param` is one constructor parameter as the command line and run files see it;
:func:`describe_params` reads them from a class (annotation, default, the ``name: help``
lines of its NumPy-style ``Parameters`` section) plus what a decorator adds (choices,
ranges, named values). Used by :mod:`salmap.registry`; nothing here runs the class.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: constructor parameters supplied by the runner, never by a flag or a run file
FIXED = frozenset({"model", "bounds"})

_PLAIN_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str}
_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+]?[\w.]+)\s*,\s*([-+]?[\w.]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Param:
    """One constructor parameter as the CLI and run files see it.

    ``type`` is ``float``, ``int``, ``bool`` or ``str`` (``None`` for anything else: such a
    parameter takes Python objects and is offered to the API only, unless the decorator
    names some of its values). ``types`` lists every plain type of a union such as
    ``str | float`` (a string that reads as a number becomes the number). ``nullable``
    when ``None`` is accepted. ``interval`` is ``(low, high, low_closed, high_closed)``.
    ``named`` maps names a flag or run file may give to factories of the object passed
    to the constructor (e.g. ``region: outside``); they are called only when the
    algorithm is built.
    """

    name: str
    type: type | None
    default: Any
    required: bool
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    interval: tuple[float, float, bool, bool] | None = None
    help: str = ""
    types: tuple[builtins.type, ...] = ()
    named: Mapping[str, Callable[[], Any]] | None = None

    @property
    def plain(self) -> bool:
        """Whether a flag or a run file can set it (a number, bool or string)."""
        return self.type is not None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices is not None:
            numbers = " or a number" if {int, float} & set(self.types) and str in self.types else ""
            return "one of " + ", ".join(repr(c) for c in self.choices) + numbers
        if self.interval is not None:
            low, high, lc, hc = self.interval
            return f"in {'[' if lc else '('}{_num(low)}, {_num(high)}{']' if hc else ')'}"
        return ""

    def check(self, value: Any) -> Any:
        """The value converted to the parameter's type; ValueError naming it otherwise."""
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise ValueError(f"{self.name} must not be null (default {self.default!r})")
        if self.type is None:
            raise ValueError(f"{self.name} takes a Python object and cannot be set from a flag or run file")
        value = _convert_union(self.name, value, self.types or (self.type,))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.choices is not None and value not in self.choices and not (number and str in self.types):
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{self.name} must be {self.describe_range()}, got {value!r}{hint}")
        if self.interval is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high, lc, hc = self.interval
            inside = (value >= low if lc else value > low) and (value <= high if hc else value < high)
            if not inside or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{self.name} must be {self.describe_range()}, got {value!r}")
        return value

    def value(self, checked: Any) -> Any:
        """What the constructor receives for a checked value (a named value is built here)."""
        if self.named is not None and isinstance(checked, str) and checked in self.named:
            return self.named[checked]()
        return checked


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


def _convert(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _convert_union(name: str, value: Any, types: tuple[type, ...]) -> Any:
    if len(types) == 1:
        return _convert(name, value, types[0])
    for kind in types:
        try:
            return _convert(name, value, kind)
        except ValueError:
            continue
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ValueError(f"{name} must be {' or '.join(kinds[t] for t in types)}, got {value!r}")


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


