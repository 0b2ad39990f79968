"""The ``models``, ``attacks`` and ``explanations`` sections of a run description.

Attack and explainer names, targeting modes and parameters are checked against their
declarations in :mod:`salmap.registry` (plugins included): nothing of the algorithm is
imported beyond its registration and no object is built, so a run file cannot make
validation run code. A model path naming Python code (``package.module:factory``) is
accepted only when the command line allows code (``--allow-code``); it is neither
imported nor called here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from salmap import registry
from salmap.evaluation.checker import Checker, items, join, labels_unique
from salmap.evaluation.settings import RUN_TARGETING, AttackConfig, ExplainConfig, ModelConfig
from salmap.evaluation.sources import is_factory, resolve


def normalization(check: Checker, path: str, raw: Any) -> dict[str, list[float]] | None:
    """``models[i].normalization``: ``{mean: [...], std: [...]}`` checked (lengths, std > 0)."""
    from salmap.models.checkpoint import normalization_pair
    from salmap.models.normalized import parse_normalization

    if raw is None:
        return None
    try:
        mean, std = parse_normalization(*normalization_pair(raw))
    except ValueError as err:
        check.add(f"{path}.normalization", str(err))
        return None
    return {"mean": mean, "std": std}


def parse_models(check: Checker, raw: Any, base: Path | None, allow_code: bool) -> list[ModelConfig]:
    models = []
    for path, m in items(check, "models", raw, required=True):
        check.unknown_keys(path, m, {"name", "path", "defense", "normalization", "output_key", "model_args"})
        source = check.string(f"{path}.path", m.get("path"), required=True) or ""
        if source and is_factory(source, base):
            if not allow_code:
                check.add(f"{path}.path", f"{source!r} names Python code (module:factory); it runs only when the "
                          "command line allows it with --allow-code")
        elif source and base is not None:
            source = str(resolve(base, source))
        label = check.string(f"{path}.name", m.get("name"), None) or (Path(source).name or source or path)
        defense = check.string(f"{path}.defense", m.get("defense"), None)
        models.append(ModelConfig(
            name=label, path=source, defense=defense, normalization=normalization(check, path, m.get("normalization")),
            output_key=check.string(f"{path}.output_key", m.get("output_key"), None),
            model_args=check.mapping(f"{path}.model_args", m.get("model_args") or {}) or {},
        ))
    labels_unique(check, "models", [m.name for m in models])
    return models


def lookup(check: Checker, path: str, kind: str, name: str | None) -> registry.Entry | None:
    """The registry entry ``name`` of ``kind`` (``attack`` or ``explainer``); a problem otherwise."""
    if name is None:
        return None
    entries = registry.attacks() if kind == "attack" else registry.explainers()
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    check.add(path, f"must be one of {', '.join(entries)}, got {name!r}{hint}")
    return None


def check_params(check: Checker, path: str, entry: registry.Entry, raw: Any) -> dict[str, Any]:
    """``raw`` checked against the entry's declared parameters, one problem per key."""
    params = check.mapping(path, raw if raw is not None else {})
    if params is None:
        return {}
    known = entry.param_map
    offered = sorted(n for n, p in known.items() if p.plain)
    clean: dict[str, Any] = {}
    for key, value in params.items():
        where = join(path, str(key))
        if key in registry.FIXED:
            check.add(where, "is set by the runner (from the model), not the run file")
        elif key not in known:
            close = difflib.get_close_matches(str(key), offered, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            check.add(where, f"unknown parameter of {entry.cls.__name__}{hint}; accepted: {', '.join(offered)}")
        elif not known[key].plain:
            check.add(where, "takes a Python object and cannot be set from a run file")
        else:
            try:
                clean[str(key)] = known[key].check(value)
            except ValueError as err:
                check.add(where, str(err))
    for p in entry.params:
        if p.required and p.name not in params:
            check.add(join(path, p.name), "is required")
    return clean


def default_label(kind: str, params: dict[str, Any]) -> str:
    if not params:
        return kind
    return kind + "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"


def parse_attacks(check: Checker, raw: Any, required: bool = True) -> list[AttackConfig]:
    """The ``attacks:`` section (``required``: at least one entry)."""
    attacks = []
    for path, a in items(check, "attacks", raw, required=required):
        check.unknown_keys(path, a, {"attack", "name", "targets", "params"})
        kind = check.string(f"{path}.attack", a.get("attack"), required=True)
        entry = lookup(check, f"{path}.attack", "attack", kind)
        targets = "none"
        params: dict[str, Any] = {}
        valid = False
        if entry is not None:
            modes = tuple(m for m in entry.targeting if m in RUN_TARGETING) or ("none",)
            default = entry.default_targeting if entry.default_targeting in modes else modes[0]
            targets = check.choice(f"{path}.targets", a.get("targets"), modes, default)
            before = len(check.problems)
            params = check_params(check, f"{path}.params", entry, a.get("params"))
            valid = len(check.problems) == before
        raw_params = a["params"] if isinstance(a.get("params"), dict) else {}
        label = check.string(f"{path}.name", a.get("name"), None) or default_label(
            entry.name if entry else "attack", params if entry is not None and valid else raw_params)
        if a.get("name") is None and entry is not None and targets != entry.default_targeting:
            label += f" targets={targets}"
        attacks.append(AttackConfig(name=label, attack=entry.name if entry else "", targets=targets, params=params))
    labels_unique(check, "attacks", [a.name for a in attacks])
    return attacks


def parse_explanations(check: Checker, raw: Any) -> list[ExplainConfig]:
    found = []
    for path, e in items(check, "explanations", raw, required=False):
        check.unknown_keys(path, e, {"explainer", "name", "params"})
        kind = check.string(f"{path}.explainer", e.get("explainer"), required=True)
        entry = lookup(check, f"{path}.explainer", "explainer", kind)
        params = check_params(check, f"{path}.params", entry, e.get("params")) if entry is not None else {}
        label = check.string(f"{path}.name", e.get("name"), None) or (entry.name if entry else "explainer")
        found.append(ExplainConfig(name=label, explainer=entry.name if entry else "", params=params))
    labels_unique(check, "explanations", [e.name for e in found])
    return found


__all__ = ["check_params", "is_factory", "lookup", "parse_attacks", "parse_explanations", "parse_models", "resolve"]
