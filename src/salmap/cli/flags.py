"""Command-line flags generated from the registry: one flag per plain parameter of an entry.

A registered attack or explainer (:mod:`salmap.registry`) declares its parameters once;
this module turns them into ``argparse`` flags and the parsed flags back into a checked
``params`` dict:

- a number or string parameter ``gamma`` becomes ``--gamma VALUE`` (type, choices, range and
  default in the help, the help text from the class docstring; ``none`` for a parameter
  that accepts ``None``);
- a bool defaulting to ``False`` becomes the switch ``--name``, one defaulting to ``True``
  the switch ``--no-name``, one defaulting to ``None`` both;
- the aliases an entry declares (``flags={"single": ("pairs", False)}``) are added too, so
  that older flags keep working.

Flags default to "not given" (``argparse.SUPPRESS``): :func:`params_from_args` returns only
what the user set, so the class's own defaults apply otherwise. Every value is converted
and checked by :meth:`Param.check`, so a wrong value is a usage error naming the flag.

Example::

    p = argparse.ArgumentParser()
    add_entry_flags(p, registry.get_attack("jsma"))
    args = p.parse_args(["--gamma", "0.1", "--single"])
    params_from_args(registry.get_attack("jsma"), args)   # {"gamma": 0.1, "pairs": False}
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping
from typing import Any

from salmap.registry import Entry, Param

#: the namespace prefix of a flag shared by every entry of a parser (``param.gamma``)
SHARED = "param"
_NONE = ("none", "null")


def _dest(scope: str, name: str) -> str:
    return f"{scope}.{name}"


def _converter(p: Param, flag: str) -> Any:
    def convert(text: str) -> Any:
        if p.nullable and text.strip().lower() in _NONE:
            return None
        try:
            return p.check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = p.type.__name__ if p.type else "value"  # argparse's "invalid <name> value"
    return convert


def plain_text(doc: str, limit: int = 240) -> str:
    """Docstring text without reST markup, cut after a sentence when longer than ``limit``."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([\w]+)`", r"\1", doc)
    text = text.replace("``", "")
    if len(text) > limit:
        cut = max(text.rfind(". ", 0, limit), text.rfind("; ", 0, limit))
        text = text[: cut + 1] if cut > 0 else text[:limit].rstrip() + "..."
    return text


def describe(p: Param) -> str:
    """The help of a parameter's flag: its docstring line, range and default."""
    facts = []
    if p.describe_range():
        facts.append(p.describe_range())
    if p.nullable and p.type is not bool:
        facts.append("'none' accepted")
    facts.append("required" if p.required else f"default: {_show(p.default)}")
    text = f"{plain_text(p.help)} [{'; '.join(facts)}]" if p.help else f"[{'; '.join(facts)}]"
    return text.replace("%", "%%")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _metavar(p: Param) -> str:
    if p.choices is not None:
        number = "|X" if {int, float} & set(p.types) and str in p.types else ""
        return "{" + ",".join(str(c) for c in p.choices) + "}" + number
    return {float: "X", int: "N"}.get(p.type, "TEXT") if p.type else "VALUE"


def _options(p: Param, prefix: str = "") -> dict[str, Any]:
    """Option strings -> argparse keywords for one parameter (without ``dest``)."""
    name = (prefix + p.name).replace("_", "-")
    if p.type is bool and not p.required:
        found: dict[str, Any] = {}
        if p.default is not True:
            found[f"--{name}"] = {"action": "store_const", "const": True, "help": describe(p)}
        if p.default is not False:
            text = f"set {p.name} to false ({plain_text(p.help)})" if p.help else f"set {p.name} to false"
            found[f"--no-{name}"] = {"action": "store_const", "const": False,
                                     "help": text.replace("%", "%%") + " [default: on]" * (p.default is True)}
        return found
    # never required by argparse: a command may offer several entries; Entry.check reports it
    return {f"--{name}": {"type": _converter(p, f"--{name}"), "metavar": _metavar(p), "help": describe(p)}}


def add_entry_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    entry: Entry,
    *,
    reserved: Collection[str] = (),
    scoped: bool = False,
    taken: dict[str, Param] | None = None,
) -> list[str]:
    """Add a flag for every plain parameter of ``entry``; return the option strings added.

    Parameters
    ----------
    parser: the parser or argument group the flags go into.
    entry: the registered attack or explainer.
    reserved: parameter names the command sets itself from its own flags (e.g. ``seed``
        from ``--seed``); no flag is generated for them.
    scoped: also add ``--ENTRY-PARAM`` flags (``--lrp-eps``), for commands that take several
        entries at once. The plain ``--PARAM`` flag is shared by every entry with a parameter
        of that name and type (``taken`` records them across calls); where it belongs to
        another entry's parameter of another type, or to the command itself (explain's
        ``--eps`` is the attack's), the entry's parameter is set with ``--ENTRY-PARAM`` only.
    taken: the plain flags added so far to this parser, by parameter name.
    """
    taken = {} if taken is None else taken
    added: list[str] = []
    for p in entry.params:
        if not p.plain or p.name in reserved:
            continue
        plain = _options(p)
        owner = taken.get(p.name)
        free = owner is None and not set(plain) & _existing(parser)
        shared = free or (owner is not None and owner.type is p.type and owner.nullable == p.nullable)
        if free:
            taken[p.name] = p
            for option, kwargs in plain.items():
                parser.add_argument(option, dest=_dest(SHARED, p.name), default=argparse.SUPPRESS, **kwargs)
                added.append(option)
        if scoped or not shared:  # --ENTRY-PARAM: always in scoped mode, shown when --PARAM is not its own
            for option, kwargs in _options(p, prefix=f"{entry.name}-").items():
                hidden = {"help": argparse.SUPPRESS} if shared else {}
                parser.add_argument(option, dest=_dest(entry.name, p.name), default=argparse.SUPPRESS,
                                    **{**kwargs, **hidden})
                added.append(option)
    params = entry.param_map
    for alias, target in entry.flags.items():
        option = "--" + alias.replace("_", "-")
        if option in _existing(parser):
            continue
        if isinstance(target, str):
            p = params[target]
            kwargs = {"type": _converter(p, option), "metavar": _metavar(p), "help": f"same as {p.flag}"}
        else:
            p, value = params[target[0]], target[1]
            kwargs = {"action": "store_const", "const": value, "help": f"same as {p.name}={_show(value)}"}
        dest = _dest(entry.name, p.name) if scoped else _dest(SHARED, p.name)
        parser.add_argument(option, dest=dest, default=argparse.SUPPRESS, **kwargs)
        added.append(option)
    return added


def _existing(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> set[str]:
    return set(parser._option_string_actions)  # groups share their parser's table


def params_from_args(
    entry: Entry, args: argparse.Namespace, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters of ``entry`` the user set on the command line, checked by :meth:`Entry.check`.

    A ``--ENTRY-PARAM`` flag wins over the shared ``--PARAM``. ``base`` gives values the
    command supplies when the user set none (e.g. ``{"seed": args.seed}``); keys that are
    not parameters of ``entry`` are ignored.
    """
    found: dict[str, Any] = {}
    values = vars(args)
    for p in entry.params:
        for dest in (_dest(entry.name, p.name), _dest(SHARED, p.name)):
            if dest in values:
                found[p.name] = values[dest]
                break
        else:
            if base is not None and p.name in base:
                found[p.name] = base[p.name]
    return entry.check(found)


def parse_spec(text: str, what: str = "--attack") -> tuple[str, dict[str, Any]]:
    """``"fgsm:eps=0.1,early_stop=true"`` -> ``("fgsm", {"eps": "0.1", "early_stop": "true"})``.

    Values stay strings (``none``/``null`` become ``None``): :meth:`Entry.check` converts
    them to the parameter's type, so no YAML or Python is evaluated.
    """
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} parameters must be KEY=VALUE, got {item!r} in {text!r}")
        value = value.strip()
        params[key.strip().replace("-", "_")] = None if value.lower() in _NONE else value
    if not name.strip():
        raise ValueError(f"{what} must start with a name, got {text!r}")
    return name.strip(), params


def as_flags(params: Mapping[str, Any]) -> str:
    """``{"indicator": "sensitivity"}`` -> ``--indicator sensitivity``."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in params.items())


def entry_help(entry: Entry) -> str:
    """One line for a listing: the help, and where a plugin comes from."""
    text = plain_text(entry.help)
    return text if entry.source == "salmap" else f"{text} (plugin: {entry.source})"


def listing(entries: Mapping[str, Entry]) -> str:
    """``name: help`` lines for an epilog."""
    width = max((len(n) for n in entries), default=0)
    return "\n".join(f"  {name.ljust(width)}  {entry_help(e)}" for name, e in entries.items())


__all__ = ["SHARED", "add_entry_flags", "as_flags", "describe", "entry_help", "listing", "params_from_args",
           "parse_spec"]
