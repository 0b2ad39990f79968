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
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, TypeVar

from salmap._params import (
    FIXED,
    Param,
    describe_params,
    docstring_params,
    first_line,
    parse_interval,
)

logger = logging.getLogger(__name__)

#: targeting modes of classifiers: untargeted with the true labels, a seeded random other
#: class, the next class, the least likely class, or every other class (the source-target
#: grid of Papernot et al.).
CLASSIFIER_TARGETING = ("none", "random", "next", "least-likely", "all")
#: goals of segmentation attacks (see :mod:`salmap.targets`).
SEGMENTATION_TARGETING = ("hide", "relabel", "add")

#: entry-point groups read for plugins
ENTRY_POINT_GROUPS = {"attack": "salmap.attacks", "explainer": "salmap.explainers"}
#: modules whose import registers the built-in entries
BUILTIN_MODULES = {
    "attack": ("salmap.attacks",),
    "explainer": ("salmap.explain",),
}

T = TypeVar("T", bound=type)


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

    def budget(self, params: Mapping[str, Any] | None = None) -> dict[str, float]:
        """The perturbation budget these parameters set, by metric (``{"linf": 0.3}``), from the
        decorator's ``budget={"linf": "eps"}``; empty when the attack declares none."""
        values = {**self.defaults(), **(params or {})}
        return {metric: float(values[name]) for metric, name in (self.extra.get("budget") or {}).items()
                if values.get(name) is not None}

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
    needs_module: bool | Mapping[str, Any] = False,
    choices: Mapping[str, Iterable[Any]] | None = None,
    ranges: Mapping[str, str] | None = None,
    named: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None,
    flags: Mapping[str, str | tuple[str, Any]] | None = None,
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
    needs_module: True when it needs a ``torch.nn.Module`` (hooks, layers), not any callable;
        ``{"indicator": "relevance"}`` when only those parameter values need one.
    choices: allowed values per parameter (``Literal`` annotations are read too).
    ranges: allowed interval per parameter, e.g. ``{"gamma": "(0, 1]", "eps": "[0, inf)"}``.
    named: names for values of an object parameter, each with a factory called at build time,
        e.g. ``{"region": {"outside": lambda: outside()}}`` (flags and run files give the name).
    flags: extra command-line flags kept for compatibility: ``{"single": ("pairs", False)}``
        adds the switch ``--single`` setting ``pairs=False``; ``{"alias": "param"}`` adds
        ``--alias VALUE`` for ``param``.
    extra: anything else a front end may read; ``hooks=True`` says it registers hooks on the
        model's layers (so TorchScript models are refused at validation); ``budget={"linf": "eps"}`` names the parameter
        that bounds a distortion metric of :class:`~salmap.attacks.base.AttackResult` (``l0``,
        ``l0_fraction``, ``l2``, ``linf``); the property tests check it.
    """
    return _register("attack", name, help, tasks, targeting, default_targeting, needs_module,
                     _Extras(choices, ranges, named, flags, extra))


def register_explainer(
    name: str,
    *,
    help: str | None = None,
    tasks: Iterable[str] = ("classification", "segmentation"),
    needs_module: bool | Mapping[str, Any] = False,
    choices: Mapping[str, Iterable[Any]] | None = None,
    ranges: Mapping[str, str] | None = None,
    named: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None,
    flags: Mapping[str, str | tuple[str, Any]] | None = None,
    **extra: Any,
) -> Callable[[T], T]:
    """Class decorator registering an :class:`~salmap.explain.base.Explainer` under ``name``.

    The keywords mean what they mean for :func:`register_attack`.
    """
    return _register("explainer", name, help, tasks, ("none",), "none", needs_module,
                     _Extras(choices, ranges, named, flags, extra))


def _register(
    kind: str,
    name: str,
    help: str | None,
    tasks: Iterable[str],
    targeting: Iterable[str] | None,
    default_targeting: str,
    needs_module: bool | Mapping[str, Any],
    more: _Extras | None = None,
) -> Callable[[T], T]:
    more = more or _Extras()
    if not re.fullmatch(r"[a-z][a-z0-9_+-]*", name):
        raise ValueError(f"name must be lower-case letters, digits, '-', '_' or '+', got {name!r}")

    def decorate(cls: T) -> T:
        tasks_t = tuple(tasks)
        modes = tuple(targeting) if targeting is not None else _default_modes(cls, tasks_t)
        if default_targeting not in modes:
            raise ValueError(f"default_targeting {default_targeting!r} of {name} is not among {modes}")
        params = describe_params(cls, more.choices or {}, more.ranges or {}, more.named)
        aliases = dict(more.flags or {})
        names = {p.name for p in params}
        for alias, target in aliases.items():
            param = target if isinstance(target, str) else target[0]
            if param not in names:
                raise ValueError(f"flags[{alias!r}] of {name} names {param!r}, not a parameter of {cls.__name__}")
        for key in needs_module if isinstance(needs_module, Mapping) else ():
            if key not in names:
                raise ValueError(f"needs_module of {name} names {key!r}, not a parameter of {cls.__name__}")
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
            needs_module=needs_module if isinstance(needs_module, bool) else dict(needs_module),
            source=source.split(".")[0],
            flags=aliases,
            extra=dict(more.extra or {}),
        )
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing.cls is not cls and _qualname(existing.cls) != _qualname(cls):
            raise ValueError(f"{kind} {name!r} is registered already (by {_qualname(existing.cls)})")
        _ENTRIES[kind][name] = entry
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


@dataclass(frozen=True)
class _Extras:
    choices: Mapping[str, Iterable[Any]] | None = None
    ranges: Mapping[str, str] | None = None
    named: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None
    flags: Mapping[str, str | tuple[str, Any]] | None = None
    extra: Mapping[str, Any] | None = None


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
        if vars(obj).get("registry_name") not in _ENTRIES[kind]:  # its own decorator, not a base class's
            if kind == "attack":
                _register(kind, ep.name, None, ("classification",), None, "none", False)(obj)
            else:
                _register(kind, ep.name, None, ("classification", "segmentation"), ("none",), "none", False)(obj)


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
    "CLASSIFIER_TARGETING", "FIXED", "Entry", "Param", "SEGMENTATION_TARGETING", "attacks", "docstring_params",
    "first_line", "parse_interval",
    "explainers", "get_attack", "get_explainer", "register_attack", "register_explainer", "reload_plugins",
]
