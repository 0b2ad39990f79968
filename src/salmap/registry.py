"""The registry of attacks and explainers: every name the CLI and run files accept.

An algorithm registers itself in its own file::

    @register_attack("jsma", ranges={"gamma": "(0, 1]"}, default_targeting="random")
    class JSMA(Attack): ...

Its parameters are read once from the constructor's signature (name, type, default) and
its NumPy-style docstring (help); the decorator adds what a signature cannot say (allowed
values and ranges, which targeting modes and tasks it supports). The command line's flags,
run-file validation, ``salmap defend``'s attack list and the property tests are all
generated from these entries.

Other installed packages add entries through the entry-point groups ``salmap.attacks`` and
``salmap.explainers``: the entry point names a class carrying the same decorator (a class
without it is registered under the entry point's name with the defaults).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

#: targeting modes of classifiers: untargeted with the true labels, a seeded random other
#: class, the next class, the least likely class, or every other class (the source-target
#: grid of Papernot et al.).
CLASSIFIER_TARGETING = ("none", "random", "next", "least-likely", "all")
#: goals of segmentation attacks (see :mod:`salmap.targets`).
SEGMENTATION_TARGETING = ("hide", "relabel", "add")

#: constructor parameters supplied by the runner, never by a flag or a run file
FIXED = frozenset({"model", "bounds"})
#: entry-point groups read for plugins
ENTRY_POINT_GROUPS = {"attack": "salmap.attacks", "explainer": "salmap.explainers"}
#: modules whose import registers the built-in entries
BUILTIN_MODULES = {
    "attack": ("salmap.attacks",),
    "explainer": ("salmap.explain",),
}

T = TypeVar("T", bound=type)

_PLAIN_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str}
_INTERVAL = re.compile(r"^\s*([\[(])\s*([-+]?[\w.]+)\s*,\s*([-+]?[\w.]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Param:
    """One constructor parameter as the CLI and run files see it.

    ``type`` is ``float``, ``int``, ``bool`` or ``str`` (``None`` for anything else: such a
    parameter takes Python objects and is offered to the API only). ``nullable`` when
    ``None`` is accepted. ``interval`` is ``(low, high, low_closed, high_closed)``.
    """

    name: str
    type: type | None
    default: Any
    required: bool
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    interval: tuple[float, float, bool, bool] | None = None
    help: str = ""

    @property
    def plain(self) -> bool:
        """Whether a flag or a run file can set it (a number, bool or string)."""
        return self.type is not None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
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
        value = _convert(self.name, value, self.type)
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{self.name} must be {self.describe_range()}, got {value!r}{hint}")
        if self.interval is not None and isinstance(value, (int, float)):
            low, high, lc, hc = self.interval
            inside = (value >= low if lc else value > low) and (value <= high if hc else value < high)
            if not inside or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{self.name} must be {self.describe_range()}, got {value!r}")
        return value


@dataclass(frozen=True)
class Entry:
    """A registered attack or explainer: its class, parameters and what it supports."""

    name: str
    kind: str  # "attack" or "explainer"
    cls: type
    help: str
    params: tuple[Param, ...]
    tasks: tuple[str, ...] = ("classification",)
    targeting: tuple[str, ...] = CLASSIFIER_TARGETING
    default_targeting: str = "none"
    needs_module: bool = False
    source: str = "salmap"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def param_map(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    @property
    def targeted(self) -> bool:
        """Whether it accepts targets (any mode other than ``none``)."""
        return any(t != "none" for t in self.targeting)

    @property
    def untargeted(self) -> bool:
        return "none" in self.targeting

    def check(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate parameters against the declarations; all problems in one ValueError.

        Runs no code of the algorithm: only the declared names, types, choices and ranges.
        """
        problems: list[str] = []
        clean: dict[str, Any] = {}
        known = self.param_map
        for key, value in (params or {}).items():
            if key in FIXED:
                problems.append(f"{key} is set by the runner (from the model), not by the user")
                continue
            if key not in known:
                offered = sorted(n for n, p in known.items() if p.plain)
                close = difflib.get_close_matches(str(key), offered, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    f"{key} is not a parameter of {self.name}{hint}; accepted: {', '.join(offered) or 'none'}"
                )
                continue
            try:
                clean[key] = known[key].check(value)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError(f"{self.kind} {self.name}: " + "; ".join(problems))
        return clean

    def build(self, model: Any, bounds: Any = None, **params: Any) -> Any:
        """The configured object: ``cls(model, bounds=..., **params)`` (bounds if it takes them)."""
        kwargs = self.check(params)
        if bounds is not None and "bounds" in inspect.signature(self.cls).parameters:
            kwargs["bounds"] = bounds
        return self.cls(model, **kwargs)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if p.plain and not p.required}


_ENTRIES: dict[str, dict[str, Entry]] = {"attack": {}, "explainer": {}}
_LOADED: set[str] = set()


def register_attack(
    name: str,
    *,
    help: str | None = None,
    tasks: Iterable[str] = ("classification",),
    targeting: Iterable[str] | None = None,
    default_targeting: str = "none",
    needs_module: bool = False,
    choices: Mapping[str, Iterable[Any]] | None = None,
    ranges: Mapping[str, str] | None = None,
    **extra: Any,
) -> Callable[[T], T]:
    """Class decorator registering an :class:`~salmap.attacks.base.Attack` under ``name``.

    Parameters
    ----------
    name: the name in the CLI (``salmap attack NAME``) and run files (``attack: NAME``).
    help: one line; default the first line of the class docstring.
    tasks: ``"classification"`` and/or ``"segmentation"``.
    targeting: the targeting modes it supports; default every classifier mode the class
        supports (``none`` only if it is untargeted, the others only if it is targeted), or
        the segmentation goals for a segmentation attack.
    default_targeting: the mode used when a run names none.
    needs_module: True when it needs a ``torch.nn.Module`` (hooks, layers), not any callable.
    choices: allowed values per parameter (``Literal`` annotations are read too).
    ranges: allowed interval per parameter, e.g. ``{"gamma": "(0, 1]", "eps": "[0, inf)"}``.
    extra: anything else a front end may read (e.g. ``flags`` aliases kept for compatibility).
    """
    return _register("attack", name, help, tasks, targeting, default_targeting, needs_module, choices, ranges, extra)


def register_explainer(
    name: str,
    *,
    help: str | None = None,
    tasks: Iterable[str] = ("classification", "segmentation"),
    needs_module: bool = False,
    choices: Mapping[str, Iterable[Any]] | None = None,
    ranges: Mapping[str, str] | None = None,
    **extra: Any,
) -> Callable[[T], T]:
    """Class decorator registering an :class:`~salmap.explain.base.Explainer` under ``name``."""
    return _register("explainer", name, help, tasks, ("none",), "none", needs_module, choices, ranges, extra)


def _register(
    kind: str,
    name: str,
    help: str | None,
    tasks: Iterable[str],
    targeting: Iterable[str] | None,
    default_targeting: str,
    needs_module: bool,
    choices: Mapping[str, Iterable[Any]] | None,
    ranges: Mapping[str, str] | None,
    extra: Mapping[str, Any],
) -> Callable[[T], T]:
    if not re.fullmatch(r"[a-z][a-z0-9_+-]*", name):
        raise ValueError(f"name must be lower-case letters, digits, '-', '_' or '+', got {name!r}")

    def decorate(cls: T) -> T:
        tasks_t = tuple(tasks)
        modes = tuple(targeting) if targeting is not None else _default_modes(cls, tasks_t)
        if default_targeting not in modes:
            raise ValueError(f"default_targeting {default_targeting!r} of {name} is not among {modes}")
        params = describe_params(cls, choices or {}, ranges or {})
        source = getattr(cls, "__module__", "") or ""
        entry = Entry(
            name=name,
            kind=kind,
            cls=cls,
            help=help or first_line(cls.__doc__) or name,
            params=params,
            tasks=tasks_t,
            targeting=modes,
            default_targeting=default_targeting,
            needs_module=needs_module,
            source=source.split(".")[0],
            extra=dict(extra),
        )
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing.cls is not cls and _qualname(existing.cls) != _qualname(cls):
            raise ValueError(f"{kind} {name!r} is registered already (by {_qualname(existing.cls)})")
        _ENTRIES[kind][name] = entry
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def _default_modes(cls: type, tasks: tuple[str, ...]) -> tuple[str, ...]:
    if "segmentation" in tasks and "classification" not in tasks:
        return SEGMENTATION_TARGETING
    modes = []
    if getattr(cls, "supports_untargeted", True):
        modes.append("none")
    if getattr(cls, "supports_targeted", True):
        modes.extend(m for m in CLASSIFIER_TARGETING if m != "none")
    return tuple(modes)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- reading parameters from a class ---------------------------------------------------
def describe_params(
    cls: type, choices: Mapping[str, Iterable[Any]], ranges: Mapping[str, str]
) -> tuple[Param, ...]:
    """The constructor's parameters (less the model and bounds), with help from the docstring."""
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
        ptype, nullable, literal = _read_annotation(annotation, p.default)
        allowed = tuple(choices[p.name]) if p.name in choices else literal
        interval = parse_interval(ranges[p.name], f"ranges[{p.name!r}]") if p.name in ranges else None
        required = p.default is inspect.Parameter.empty
        out.append(Param(
            name=p.name,
            type=ptype,
            default=None if required else p.default,
            required=required,
            nullable=nullable,
            choices=allowed,
            interval=interval,
            help=helps.get(p.name, ""),
        ))
    for key in list(choices) + list(ranges):
        if key not in names:
            raise ValueError(f"{cls.__name__} has no parameter {key!r} (named in choices or ranges)")
    return tuple(out)


def _read_annotation(annotation: Any, default: Any) -> tuple[type | None, bool, tuple[Any, ...] | None]:
    """(plain type or None, accepts None, Literal values) from an annotation (string or object)."""
    text = annotation if isinstance(annotation, str) else _annotation_text(annotation)
    if text is None:
        if isinstance(default, bool):
            return bool, False, None
        for t in (int, float, str):
            if isinstance(default, t):
                return t, False, None
        return None, default is None, None
    parts = [part.strip() for part in _split_union(text)]
    nullable = "None" in parts or default is None
    parts = [part for part in parts if part != "None"]
    literal = None
    for part in parts:
        m = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", part)
        if m:
            literal = tuple(_literal_values(m.group(1)))
    types = {type(v) for v in literal} if literal else {_PLAIN_TYPES.get(part) for part in parts}
    plain = [t for t in types if t is not None]
    if not plain:
        return None, nullable, None
    if float in plain and int in plain:
        return float, nullable, literal
    if str in plain:  # e.g. "str | Composite": the string form is the one a flag can give
        return str, nullable, literal
    return plain[0], nullable, literal


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
    values = []
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


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


# -- lookup ----------------------------------------------------------------------------
def _load(kind: str) -> None:
    if kind in _LOADED:
        return
    _LOADED.add(kind)
    for module in BUILTIN_MODULES[kind]:
        import_module(module)
    for ep in _entry_points(ENTRY_POINT_GROUPS[kind]):
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break salmap: say so and go on
            logger.warning("salmap: %s plugin %r could not be loaded: %s", kind, ep.name, err)
            continue
        if not isinstance(obj, type):
            logger.warning("salmap: %s plugin %r names %r, not a class", kind, ep.name, obj)
            continue
        if getattr(obj, "registry_name", None) not in _ENTRIES[kind]:
            _register(kind, ep.name, None, ("classification",), None, "none", False, None, None, {})(obj)


def _entry_points(group: str) -> list[Any]:
    return list(metadata.entry_points(group=group))


def reload_plugins() -> None:
    """Read the entry points again (after installing a plugin in the same process)."""
    _LOADED.clear()


def attacks() -> dict[str, Entry]:
    """Every registered attack by name, plugins included."""
    _load("attack")
    return dict(sorted(_ENTRIES["attack"].items()))


def explainers() -> dict[str, Entry]:
    """Every registered explainer by name, plugins included."""
    _load("explainer")
    return dict(sorted(_ENTRIES["explainer"].items()))


def get_attack(name: str) -> Entry:
    """The attack registered as ``name``; LookupError with a did-you-mean otherwise."""
    return _get("attack", attacks(), name)


def get_explainer(name: str) -> Entry:
    """The explainer registered as ``name``; LookupError with a did-you-mean otherwise."""
    return _get("explainer", explainers(), name)


def _get(kind: str, entries: dict[str, Entry], name: str) -> Entry:
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(str(name), list(entries), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LookupError(f"{kind} must be one of {', '.join(entries)}, got {name!r}{hint}")


__all__ = [
    "CLASSIFIER_TARGETING", "Entry", "Param", "SEGMENTATION_TARGETING", "attacks", "docstring_params",
    "explainers", "get_attack", "get_explainer", "register_attack", "register_explainer", "reload_plugins",
]
