"""The figures of an evaluation run (drawing functions are in :mod:`salmap.plot`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from salmap.metrics import pair_rates
from salmap.plot import (
    adversarial_grid,
    explanation_overlay,
    pair_heatmap,
    segmentation_grid,
    source_target_grid,
    success_vs_budget,
)

if TYPE_CHECKING:
    from salmap.evaluation.runner import Prepared

log = logging.getLogger(__name__)


def run_figures(prep: Prepared, out: Path, rows: list[dict[str, Any]], progress: bool = False,
                ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Every figure of an evaluation run, written to ``out/figures``.

    Returns the list of ``{title, file}`` (relative to ``out``) and the explanation timings.
    """
    from salmap.evaluation.runner import FIGURES, load_examples, load_model

    cfg, ds = prep.cfg, prep.dataset
    folder = out / FIGURES
    folder.mkdir(exist_ok=True)
    figures: list[dict[str, str]] = []
    features = int(ds.x[0].numel())

    def add(title: str, path: Path) -> None:
        figures.append({"title": title, "file": str(path.relative_to(out))})

    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_pair.setdefault((r["model"], r["attack"]), []).append(r)
    shown = [i for i in prep.figure_indices if i < cfg.figures.samples]  # positions in the selection
    for m, model_cfg in enumerate(cfg.models):
        curves: dict[str, dict[str, Tensor]] = {}
        for a, attack in enumerate(cfg.attacks):
            group = by_pair.get((model_cfg.name, attack.name), [])
            if not group:
                continue
            stem = f"m{m:02d}-a{a:02d}"
            curves[attack.name] = {
                "success": torch.tensor([r["success"] for r in group]),
                "l0_fraction": torch.tensor([r["l0"] / features for r in group]),
                "l2": torch.tensor([r["l2"] for r in group]),
                "linf": torch.tensor([r["linf"] for r in group]),
            }
            examples = load_examples(out, prep, m, a)
            if examples and group[0]["label"] is None:
                add(f"{model_cfg.name}: {attack.name}", _segmentation_figure(
                    prep, m, a, examples, shown, folder / f"{stem}-grid.png", load_model))
            elif examples:
                first: dict[int, int] = {}
                for j in range(examples["position"].numel()):
                    first.setdefault(int(examples["position"][j]), j)
                pick = [first[i] for i in shown if i in first]
                lookup = {(r["index"], r["target"]): r for r in group}
                sel = torch.tensor(pick, dtype=torch.long)
                idx = examples["position"][sel]
                tgt = [None if int(t) < 0 else int(t) for t in examples["target"][sel]]
                keys = [(int(prep.indices[i]), t) for i, t in zip(idx, tgt, strict=True)]
                after = torch.tensor([lookup[key]["pred_after"] for key in keys])
                before = torch.tensor([lookup[key]["pred_before"] for key in keys])
                add(f"{model_cfg.name}: {attack.name}", adversarial_grid(
                    ds.x[idx], examples["x_adv"][sel], ds.y[idx], before, after, folder / f"{stem}-grid.png",
                    ds.class_names, rows=len(pick), title=f"{model_cfg.name}: {attack.name}"))
            if attack.targets == "all":
                k = ds.num_classes
                rates = pair_rates(torch.tensor([r["label"] for r in group]), torch.tensor([r["target"] for r in group]),
                                   torch.tensor([float(r["success"]) for r in group]), k)
                add(f"{model_cfg.name}: {attack.name}, success per source-target pair", pair_heatmap(
                    rates, folder / f"{stem}-pairs.png", ds.class_names,
                    title=f"{model_cfg.name}: {attack.name} success per pair"))
                if examples:
                    sources, adv, won = [], {}, {}
                    for c in range(k):
                        rows_c = torch.nonzero(ds.y[examples["position"]] == c).flatten()
                        if rows_c.numel() == 0:
                            break
                        sample = int(examples["position"][rows_c[0]])
                        sources.append(ds.x[sample])
                        for j in rows_c.tolist():
                            if int(examples["position"][j]) == sample:
                                t = int(examples["target"][j])
                                adv[(c, t)] = examples["x_adv"][j]
                                won[(c, t)] = bool(lookup[(int(prep.indices[sample]), t)]["success"])
                    if len(sources) == k:
                        add(f"{model_cfg.name}: {attack.name}, source-target grid", source_target_grid(
                            torch.stack(sources), adv, folder / f"{stem}-source-target.png", ds.class_names, won,
                            title=f"{model_cfg.name}: {attack.name} (rows: source, columns: target)"))
        if curves:
            add(f"{model_cfg.name}: success rate against distortion budget", success_vs_budget(
                curves, folder / f"m{m:02d}-budget.png", title=f"{model_cfg.name}: success within budget"))
    explained = _explanations(prep, out, folder, shown, load_model, add)
    return figures, explained


def _segmentation_figure(prep: Prepared, m: int, a: int, examples: dict[str, Tensor], shown: list[int],
                         path: Path, load_model: Any) -> Path:
    """Input, prediction, target mask, adversarial input and prediction of the figure samples."""
    from salmap.attacks.jsma_seg import predict_masks
    from salmap.evaluation.runner import segmentation_goals

    cfg, ds = prep.cfg, prep.dataset
    keep = torch.tensor([j for j in range(examples["position"].numel()) if int(examples["position"][j]) in shown])
    position = examples["position"][keep]
    x, x_adv = ds.x[position], examples["x_adv"][keep]
    model, _ = load_model(cfg.models[m].path, cfg.device)
    pred = predict_masks(model, x.to(cfg.device)).cpu()
    pred_adv = predict_masks(model, x_adv.to(cfg.device)).cpu()
    goals = segmentation_goals(model, ds, cfg.attacks[a].targets, position, cfg.device)
    title = f"{cfg.models[m].name}: {cfg.attacks[a].name}"
    return segmentation_grid(x, pred, goals, x_adv, pred_adv, path, max(ds.num_classes, 2), rows=len(position),
                             title=title)


def _explanations(prep: Prepared, out: Path, folder: Path, shown: list[int], load_model: Any, add: Any,
                  ) -> list[dict[str, Any]]:
    """Attribution overlays of the figure samples for every model and explainer."""
    from salmap import registry

    cfg, ds = prep.cfg, prep.dataset
    found: list[dict[str, Any]] = []
    if not cfg.explanations or not shown:
        return found
    idx = torch.tensor(shown, dtype=torch.long)
    for m, model_cfg in enumerate(cfg.models):
        model, _ = load_model(model_cfg.path, cfg.device)
        x = ds.x[idx].to(cfg.device)
        y = ds.y[idx].to(cfg.device)
        for e, spec in enumerate(cfg.explanations):
            explainer = registry.get_explainer(spec.explainer).build(model, **spec.params)
            start = time.perf_counter()
            # a segmenter is explained for its own predicted mask; a classifier for the true class
            heat = explainer.attribute(x, target=y if ds.task == "classification" else None)
            seconds = time.perf_counter() - start
            path = explanation_overlay(x.cpu(), heat.cpu(), y.cpu(), folder / f"m{m:02d}-e{e:02d}-explain.png",
                                       ds.class_names, title=f"{model_cfg.name}: {spec.name}")
            title = f"{model_cfg.name}: explanation {spec.name}"
            add(title, path)
            found.append({"model": model_cfg.name, "explainer": spec.name, "samples": len(shown),
                          "seconds": seconds, "figure": str(path.relative_to(out))})
    return found



__all__ = ["run_figures"]
