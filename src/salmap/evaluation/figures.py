"""The figures of an evaluation run, drawn from the store only (no model is loaded here;
the drawing functions are in :mod:`salmap.plot`).

The units kept what the figures need when they ran: the adversarial inputs of the figure
samples, the segmentation masks (clean and adversarial predictions, goals) and the
attribution maps of the explanation units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from salmap.evaluation.plan import Plan
from salmap.evaluation.store import FIGURES, RunStore
from salmap.metrics import pair_rates
from salmap.plot import (
    adversarial_grid,
    explanation_overlay,
    pair_heatmap,
    segmentation_grid,
    source_target_grid,
    success_vs_budget,
)


def stored_examples(store: RunStore, plan: Plan, model: int, job: int, kind: str = "attack") -> dict[str, Tensor]:
    """The tensors the units of one model and attack (or explainer) kept for the figures."""
    parts = [store.examples(u.key) for u in plan.units if u.model == model and u.attack == job and u.kind == kind]
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def draw(plan: Plan, store: RunStore, rows: list[dict[str, Any]],
         explained: list[tuple[int, int, dict[str, Any]]]) -> list[dict[str, str]]:
    """Write every figure under ``figures/``; returns ``{title, file}`` (relative to the folder).

    ``explained``: ``(model, explainer, summary entry)`` of each explanation unit; the
    entry's ``figure`` is filled in."""
    cfg, ds, out = plan.cfg, plan.dataset, store.out
    folder = out / FIGURES
    folder.mkdir(exist_ok=True)
    figures: list[dict[str, str]] = []
    features = int(ds.x[0].numel())

    def add(title: str, path: Path) -> None:
        figures.append({"title": title, "file": str(path.relative_to(out))})

    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_pair.setdefault((r["model"], r["attack"]), []).append(r)
    shown = plan.shown
    for m, model_cfg in enumerate(cfg.models):
        curves: dict[str, dict[str, Tensor]] = {}
        for a, attack in enumerate(cfg.attacks):
            group = by_pair.get((model_cfg.name, attack.name), [])
            if not group:
                continue
            stem, title = f"m{m:02d}-a{a:02d}", f"{model_cfg.name}: {attack.name}"
            curves[attack.name] = {
                "success": torch.tensor([r["success"] for r in group]),
                "l0_fraction": torch.tensor([r["l0"] / features for r in group]),
                "l2": torch.tensor([r["l2"] for r in group]),
                "linf": torch.tensor([r["linf"] for r in group]),
            }
            examples = stored_examples(store, plan, m, a)
            if examples and "goal" in examples:
                add(title, _segmentation(plan, examples, shown, folder / f"{stem}-grid.png", title))
            elif examples:
                add(title, _grid(plan, examples, group, shown, folder / f"{stem}-grid.png", title))
            if attack.targets == "all":
                add(f"{title}, success per source-target pair", pair_heatmap(
                    pair_rates(torch.tensor([r["label"] for r in group]), torch.tensor([r["target"] for r in group]),
                               torch.tensor([float(r["success"]) for r in group]), ds.num_classes),
                    folder / f"{stem}-pairs.png", ds.class_names, title=f"{title} success per pair"))
                if examples:
                    path = _source_target(plan, examples, group, folder / f"{stem}-source-target.png", title)
                    if path is not None:
                        add(f"{title}, source-target grid", path)
        if curves:
            add(f"{model_cfg.name}: success rate against distortion budget", success_vs_budget(
                curves, folder / f"m{m:02d}-budget.png", title=f"{model_cfg.name}: success within budget"))
    for m, e, entry in explained:
        heat = stored_examples(store, plan, m, e, kind="explain")
        if not heat:
            continue
        idx = heat["position"]
        path = explanation_overlay(ds.x[idx], heat["heat"], ds.y[idx], folder / f"m{m:02d}-e{e:02d}-explain.png",
                                   ds.class_names, title=f"{entry['model']}: {entry['explainer']}")
        add(f"{entry['model']}: explanation {entry['explainer']}", path)
        entry["figure"] = str(path.relative_to(out))
    return figures


def _grid(plan: Plan, examples: dict[str, Tensor], group: list[dict[str, Any]], shown: list[int], path: Path,
          title: str) -> Path:
    ds = plan.dataset
    first: dict[int, int] = {}
    for j in range(examples["position"].numel()):
        first.setdefault(int(examples["position"][j]), j)
    sel = torch.tensor([first[i] for i in shown if i in first], dtype=torch.long)
    idx = examples["position"][sel]
    tgt = [None if int(t) < 0 else int(t) for t in examples["target"][sel]]
    lookup = {(r["index"], r["target"]): r for r in group}
    keys = [(int(plan.indices[i]), t) for i, t in zip(idx, tgt, strict=True)]
    after = torch.tensor([lookup[k]["pred_after"] for k in keys])
    before = torch.tensor([lookup[k]["pred_before"] for k in keys])
    return adversarial_grid(ds.x[idx], examples["x_adv"][sel], ds.y[idx], before, after, path, ds.class_names,
                            rows=len(sel), title=title)


def _source_target(plan: Plan, examples: dict[str, Tensor], group: list[dict[str, Any]], path: Path,
                   title: str) -> Path | None:
    ds = plan.dataset
    lookup = {(r["index"], r["target"]): r for r in group}
    sources, adv, won = [], {}, {}
    for c in range(ds.num_classes):
        rows_c = torch.nonzero(ds.y[examples["position"]] == c).flatten()
        if rows_c.numel() == 0:
            return None
        sample = int(examples["position"][rows_c[0]])
        sources.append(ds.x[sample])
        for j in rows_c.tolist():
            if int(examples["position"][j]) == sample:
                t = int(examples["target"][j])
                adv[(c, t)] = examples["x_adv"][j]
                won[(c, t)] = bool(lookup[(int(plan.indices[sample]), t)]["success"])
    return source_target_grid(torch.stack(sources), adv, path, ds.class_names, won,
                              title=f"{title} (rows: source, columns: target)")


def _segmentation(plan: Plan, examples: dict[str, Tensor], shown: list[int], path: Path, title: str) -> Path:
    """Input, prediction, goal, adversarial input and prediction of the figure samples (stored masks)."""
    ds = plan.dataset
    keep = torch.tensor([j for j in range(examples["position"].numel()) if int(examples["position"][j]) in shown])
    position = examples["position"][keep]
    return segmentation_grid(ds.x[position], examples["pred_before"][keep], examples["goal"][keep],
                             examples["x_adv"][keep], examples["pred_after"][keep], path, max(ds.num_classes, 2),
                             rows=len(position), title=title)


__all__ = ["draw", "stored_examples"]
