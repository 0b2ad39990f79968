"""The import graph follows DESIGN.md's floors: a module imports only from its own floor or below,
and no modules import each other in a circle.

Read from the source with ``ast`` (nothing is imported), so a new upward import fails here
with the line that makes it, and a new circle with the modules that make it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "salmap"

#: floor of each top-level unit of salmap (DESIGN.md, "Layers").
FLOORS = {
    "cli": 5,
    "evaluation": 4, "defenses": 4,
    "attacks": 3, "explain": 3,
    "lrp": 2, "pair_search": 2, "pair_pool": 2, "pair_matrix": 2, "targets": 2, "models": 2, "data": 2, "plot": 2, "training": 2,
    "registry": 1, "gradients": 1, "metrics": 1, "logits": 1, "_validate": 1, "_bounds": 1, "_repr": 1, "frozen": 1, "active_set": 1, "_params": 1, "_signature": 1, "randomness": 1,
    "progress": 1, "devices": 1, "precision": 1, "folding": 1, "folded_weights": 1,
}
#: units that never import each other although they share a floor.
APART = {("attacks", "explain"), ("explain", "attacks"), ("models", "defenses")}
#: circles still being taken apart (issue #12, evaluation/); an entry goes when its circle does.
KNOWN_CIRCLES: list[set[str]] = []


def unit_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, int]]:
    """``(imported salmap module, line)`` for every import in the file, lazy ones included."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return [(name, line) for name, line in found if name.startswith("salmap.")]


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.stem not in ("__init__", "__main__"))


def test_every_unit_has_a_floor() -> None:
    units = {unit_of(p) for p in sources()}
    assert units <= set(FLOORS), f"give these a floor in FLOORS (DESIGN.md): {sorted(units - set(FLOORS))}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_up_a_floor(path: Path) -> None:
    mine = unit_of(path)
    wrong = []
    for name, line in imports(path):
        theirs = name.split(".")[1]
        if theirs not in FLOORS or theirs == mine:
            continue
        if FLOORS[theirs] > FLOORS[mine] or (mine, theirs) in APART:
            wrong.append(f"line {line}: {name} (floor {FLOORS[theirs]}) from {mine} (floor {FLOORS[mine]})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from salmap.evaluation.runner import evaluate\n")
    assert imports(bad) == [("salmap.evaluation.runner.evaluate", 2)]


def module_graph() -> dict[str, set[str]]:
    """Every salmap module and the salmap modules it imports (lazy imports included)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str:  # salmap.data.base.Dataset -> salmap.data.base
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    return {m: {module_of(name) for name, _ in imports(path)} - {m} for m, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of two or more modules that reach each other through imports (strongly connected)."""
    reach = {m: set() for m in graph}
    for start in graph:
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in reach[start]:
                reach[start].add(m)
                todo += graph.get(m, ())
    groups: list[set[str]] = []
    for m in sorted(graph):
        group = {m} | {n for n in reach[m] if m in reach[n]}
        if len(group) > 1 and group not in groups:
            groups.append(group)
    return groups


def test_no_import_circle() -> None:
    found = [sorted(c) for c in circles(module_graph()) if c not in KNOWN_CIRCLES]
    assert not found, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_check_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [{"a", "b", "c"}]


#: names that moved into modules of their own, and the modules users imported them from
MOVED = {
    "salmap.attacks.fgsm": ["BIM", "FGSM", "PGD"],
    "salmap.gradients": ["ActiveStep", "active_set_loop", "frozen", "mode_is_fixed", "set_eval"],
    "salmap._validate": ["Bounds", "BoundsLike", "check_bounds", "clip_features"],
    "salmap.defenses.block_switch": ["BlockSwitch", "default_split", "sequential_layers", "split_model",
                                     "train_block_switch", "train_sub_models", "assemble_block_switch"],
    "salmap.data": ["Dataset", "available", "load", "load_dataset"],
}


@pytest.mark.parametrize("module", sorted(MOVED))
def test_moved_names_still_import_from_where_they_were(module: str) -> None:
    loaded = importlib.import_module(module)
    missing = [name for name in MOVED[module] if not hasattr(loaded, name)]
    assert not missing, f"{module} no longer has {missing}"
