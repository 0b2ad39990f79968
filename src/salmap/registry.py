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
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import import_module, metadata
from typing import Any, TypeVar

from salmap._params import CLASSIFIER_TARGETING, FIXED, SEGMENTATION_TARGETING, Entry, Param
from salmap._signature import describe_params, docstring_params, first_line, parse_interval

logger = logging.getLogger(__name__)

#: entry-point groups read for plugins
ENTRY_POINT_GROUPS = {"attack": "salmap.attacks", "explainer": "salmap.explainers"}
#: modules whose import registers the built-in entries
BUILTIN_MODULES = {
    "attack": ("salmap.attacks",),
    "explainer": ("salmap.explain",),
}

T = TypeVar("T", bound=type)


_ENTRIES: dict[str, dict[str, Entry]] = {"attack": {}, "explainer": {}}
_LOADED: set[str] = set()


def register_attack(
    name: str,
    *,
    help: str | None = None,
    tasks: Iterable[str] = ("classification",),
    targeting: Iterable[str] | None = None,
    default_targeting: str = "none",
    **options: Any,
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
    other keywords: anything else a front end may read; ``hooks=True`` says it registers hooks on the
        model's layers (so TorchScript models are refused at validation); ``model_check=fn``
        is a salmap function raising ValueError for a module it cannot handle (LRP's layer
        check), called at validation when a module is needed; ``input_check=fn(module, x)`` the same
        with one sample of the run's data, before the output folder is claimed (LRP's one-sample pass);
        ``budget={"linf": "eps"}`` names the parameter
        that bounds a distortion metric of :class:`~salmap.attacks.base.AttackResult` (``l0``,
        ``l0_fraction``, ``l2``, ``linf``); the property tests check it.

    The keywords from ``needs_module`` on are ``**options``: :func:`register_explainer`
    takes them too.
    """
    return _register("attack", name, help, tasks, targeting, default_targeting, _Options.of(options))


def register_explainer(
    name: str,
    *,
    help: str | None = None,
    tasks: Iterable[str] = ("classification", "segmentation"),
    **options: Any,
) -> Callable[[T], T]:
    """Class decorator registering an :class:`~salmap.explain.base.Explainer` under ``name``.

    The keywords (``needs_module``, ``choices``, ``ranges``, ``named``, ``flags`` and any
    other) mean what they mean for :func:`register_attack`.
    """
    return _register("explainer", name, help, tasks, ("none",), "none", _Options.of(options))


def _register(
    kind: str,
    name: str,
    help: str | None,
    tasks: Iterable[str],
    targeting: Iterable[str] | None,
    default_targeting: str,
    more: _Options,
) -> Callable[[T], T]:
    needs_module = more.needs_module
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
            extra=dict(more.extra),
        )
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing.cls is not cls and _qualname(existing.cls) != _qualname(cls):
            raise ValueError(f"{kind} {name!r} is registered already (by {_qualname(existing.cls)})")
        _ENTRIES[kind][name] = entry
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


@dataclass(frozen=True)
class _Options:
    """The keywords :func:`register_attack` and :func:`register_explainer` share (see the former)."""

    needs_module: bool | Mapping[str, Any] = False
    choices: Mapping[str, Iterable[Any]] | None = None
    ranges: Mapping[str, str] | None = None
    named: Mapping[str, Mapping[str, Callable[[], Any]]] | None = None
    flags: Mapping[str, str | tuple[str, Any]] | None = None
    #: any other keyword, for front ends to read (``hooks``, ``model_check``, ``budget``)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> _Options:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in options.items() if k in known},
                   extra={k: v for k, v in options.items() if k not in known})


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
            (register_attack if kind == "attack" else register_explainer)(ep.name)(obj)


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
