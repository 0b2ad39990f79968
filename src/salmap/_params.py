r"""What the registry holds: :class:`Entry` (a registered attack or explainer) and its :class:`Param`\s.

A :class:`Param` is one constructor parameter as the command line and run files see it
(read from the class by :mod:`salmap._signature`); it checks and converts a value without
running the class. An :class:`Entry` checks a whole parameter dict and builds the object.
Made by the decorators of :mod:`salmap.registry`.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from salmap._repr import short

#: constructor parameters supplied by the runner, never by a flag or a run file
FIXED = frozenset({"model", "bounds"})
#: targeting modes of classifiers: untargeted with the true labels, a seeded random other
#: class, the next class, the least likely class, or every other class (the source-target
#: grid of Papernot et al.).
CLASSIFIER_TARGETING = ("none", "random", "next", "least-likely", "all")
#: goals of segmentation attacks (see :mod:`salmap.targets`).
SEGMENTATION_TARGETING = ("hide", "relabel", "add")



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
            raise ValueError(f"{self.name} must be {self.describe_range()}, got {short(value)}{hint}")
        if self.interval is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high, lc, hc = self.interval
            inside = (value >= low if lc else value > low) and (value <= high if hc else value < high)
            if not inside or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{self.name} must be {self.describe_range()}, got {short(value)}")
        return value

    def value(self, checked: Any) -> Any:
        """What the constructor receives for a checked value (a named value is built here)."""
        if self.named is not None and isinstance(checked, str) and checked in self.named:
            return self.named[checked]()
        return checked


def _convert(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{name} must be true or false, got {short(value)}")
    if kind is int or kind is float:
        return _convert_number(name, value, kind)
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {short(value)}")
    return value


def _convert_number(name: str, value: Any, kind: type) -> Any:
    """``value`` as an int (an integral float or a numeral string too) or a float; never a bool."""
    if not isinstance(value, bool):
        if isinstance(value, int):
            return value if kind is int else float(value)
        if isinstance(value, float) and (kind is float or value.is_integer()):
            return kind(value)
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
    raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {short(value)}")


def _convert_union(name: str, value: Any, types: tuple[type, ...]) -> Any:
    if len(types) == 1:
        return _convert(name, value, types[0])
    for kind in types:
        try:
            return _convert(name, value, kind)
        except ValueError:
            continue
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ValueError(f"{name} must be {' or '.join(kinds[t] for t in types)}, got {short(value)}")


def _num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else str(v)


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
    #: True when it needs a ``torch.nn.Module``; a mapping ``{param: value}`` when it does
    #: only with those parameter values (ISI's ``indicator="relevance"`` runs LRP)
    needs_module: bool | Mapping[str, Any] = False
    source: str = "salmap"
    #: extra command-line flags kept for compatibility: ``{"single": ("pairs", False)}`` is a
    #: switch ``--single`` setting ``pairs=False``; ``{"n": "n_features"}`` is ``--n`` taking a
    #: value for ``n_features``
    flags: Mapping[str, str | tuple[str, Any]] = field(default_factory=dict)
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
        for p in self.params:
            if p.required and p.plain and p.name not in clean and p.name not in (params or {}):
                problems.append(f"{p.name} is required ({p.type.__name__ if p.type else 'object'})")
        if problems:
            raise ValueError(f"{self.kind} {self.name}: " + "; ".join(problems))
        return clean

    def build(self, model: Any, bounds: Any = None, **params: Any) -> Any:
        """The configured object: ``cls(model, bounds=..., **params)`` (bounds if it takes them).

        Plain values are checked as by :meth:`check` and named values built; a parameter that
        takes a Python object (a loss function, a region tensor) may be given one here.
        """
        known = self.param_map
        objects = {k: v for k, v in params.items()
                   if k in known and v is not None and not isinstance(v, (str, int, float, bool))
                   and (known[k].type is None or known[k].named is not None)}
        kwargs = self.check({k: v for k, v in params.items() if k not in objects})
        kwargs = {k: known[k].value(v) for k, v in kwargs.items()} | objects
        if bounds is not None and "bounds" in inspect.signature(self.cls).parameters:
            kwargs["bounds"] = bounds
        return self.cls(model, **kwargs)

    def requires_module(self, params: Mapping[str, Any] | None = None) -> bool:
        """Whether these parameters (the defaults where not given) need a ``torch.nn.Module``."""
        if isinstance(self.needs_module, bool):
            return self.needs_module
        values = {**self.defaults(), **(params or {})}
        return all(values.get(k) == v for k, v in self.needs_module.items())

    def check_module(self, module: Any, params: Mapping[str, Any] | None = None, sample: Any = None) -> None:
        """``ValueError`` when these parameters need a module and ``module`` is one this entry refuses: the
        decorator's ``model_check(module)``, then ``input_check(module, x)`` on the first of ``sample``'s
        rows (moved to the module's device) when a sample is given."""
        if not self.requires_module(params):
            return
        if (model_check := self.extra.get("model_check")) is not None:
            model_check(module)
        if sample is not None and (input_check := self.extra.get("input_check")) is not None:
            device = next((p.device for p in module.parameters()), sample.device)
            input_check(module, sample[:1].to(device))

    def budget(self, params: Mapping[str, Any] | None = None) -> dict[str, float]:
        """The perturbation budget these parameters set, by metric (``{"linf": 0.3}``), from the
        decorator's ``budget={"linf": "eps"}``; empty when the attack declares none."""
        values = {**self.defaults(), **(params or {})}
        return {metric: float(values[name]) for metric, name in (self.extra.get("budget") or {}).items()
                if values.get(name) is not None}

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if p.plain and not p.required}
