"""Figures (PNG, matplotlib): adversarial grids, the JSMA source-target grid and its
success heatmap, success rate against distortion budget, explanation overlays."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

if TYPE_CHECKING:
    from salmap.evaluation.runner import Prepared

log = logging.getLogger(__name__)


def to_image(x: Tensor) -> np.ndarray:
    """``(C, H, W)`` to an ``(H, W)`` or ``(H, W, 3)`` array for imshow."""
    x = x.detach().float().cpu()
    return (x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0).clamp(0, 1)).numpy()


def adversarial_grid(
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    pred_before: Tensor,
    pred_after: Tensor,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    rows: int = 8,
    title: str | None = None,
) -> Path:
    """One row per sample: original, adversarial and perturbation, with predictions."""
    n = min(rows, x.shape[0])

    def label(k: Tensor) -> str:
        return class_label(class_names, k)

    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.4), squeeze=False)
    for r in range(n):
        delta = (x_adv[r] - x[r]).float()
        lim = float(delta.abs().max()) or 1.0
        cmap = "gray" if x.shape[1] == 1 else None
        axes[r, 0].imshow(to_image(x[r]), cmap=cmap, vmin=0, vmax=1)
        axes[r, 0].set_title(f"true {label(y[r])}, pred {label(pred_before[r])}", fontsize=8)
        axes[r, 1].imshow(to_image(x_adv[r]), cmap=cmap, vmin=0, vmax=1)
        axes[r, 1].set_title(f"adversarial: pred {label(pred_after[r])}", fontsize=8)
        axes[r, 2].imshow(delta.mean(dim=0).numpy(), cmap="seismic", vmin=-lim, vmax=lim)
        axes[r, 2].set_title(f"perturbation (max {lim:.2f})", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    return save_figure(fig, path, title, tight=True)


def class_label(names: Sequence[str] | None, k: Any) -> str:
    """The name of class ``k`` when ``names`` has one, else the index as text."""
    k = int(k)
    return names[k] if names and k < len(names) else str(k)


def save_figure(fig: Any, path: str | Path, title: str | None = None, tight: bool = False) -> Path:
    """Write ``fig`` as a PNG (with an optional title and tight layout) and close it."""
    if title:
        fig.suptitle(title, fontsize=9)
    if tight or title:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def source_target_grid(
    sources: Tensor,
    adversarial: dict[tuple[int, int], Tensor],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    success: dict[tuple[int, int], bool] | None = None,
    title: str | None = None,
) -> Path:
    """The source-target grid of Papernot et al. 2016 (their figure 1): row ``s`` is a sample of
    class ``s``, column ``t`` its adversarial example crafted towards class ``t``; the
    diagonal shows the original. Failed crafts are framed in red.

    Parameters
    ----------
    sources: ``(K, C, H, W)``: one sample per source class (row order).
    adversarial: ``{(source, target): (C, H, W)}``; missing pairs are left blank.
    success: ``{(source, target): reached}`` to mark failures.
    """
    k = sources.shape[0]
    fig, axes = plt.subplots(k, k, figsize=(0.9 * k + 0.6, 0.9 * k + 0.8), squeeze=False)
    cmap = "gray" if sources.shape[1] == 1 else None
    for s in range(k):
        for t in range(k):
            ax = axes[s, t]
            image = sources[s] if s == t else adversarial.get((s, t))
            if image is not None:
                ax.imshow(to_image(image), cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            failed = success is not None and s != t and not success.get((s, t), True)
            for spine in ax.spines.values():
                spine.set_color("red" if failed else "white")
                spine.set_linewidth(2 if failed else 0.5)
            if s == 0:
                ax.set_title(class_label(class_names, t), fontsize=8)
            if t == 0:
                ax.set_ylabel(class_label(class_names, s), fontsize=8)
    fig.supxlabel("target class", fontsize=9)
    fig.supylabel("source class", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def pair_rates(sources: Tensor, targets: Tensor, values: Tensor, num_classes: int) -> Tensor:
    """The mean of ``values`` per (source, target) pair as a ``(K, K)`` matrix, NaN where no sample is.

    With ``values`` the success flags this is the success rate of each pair of the source-target grid.
    """
    k = num_classes
    cell = (sources.long() * k + targets.long()).cpu()
    counts = torch.bincount(cell, minlength=k * k).float()
    sums = torch.bincount(cell, weights=values.detach().double().cpu(), minlength=k * k).float()
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).view(k, k)


def pair_heatmap(
    rates: Tensor, path: str | Path, class_names: Sequence[str] | None = None, title: str | None = None,
    label: str = "success rate",
) -> Path:
    """A ``(K, K)`` matrix of per source-target pair values (success rates), NaN cells blank."""
    values = rates.detach().float().cpu().numpy()
    k = values.shape[0]
    fig, ax = plt.subplots(figsize=(0.5 * k + 2.4, 0.5 * k + 1.6))
    shown = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1)
    ticks = [class_label(class_names, i) for i in range(k)]
    ax.set_xticks(range(k), ticks, fontsize=7)
    ax.set_yticks(range(k), ticks, fontsize=7)
    ax.set_xlabel("target class")
    ax.set_ylabel("source class")
    for s in range(k):
        for t in range(k):
            if np.isfinite(values[s, t]):
                ax.text(t, s, f"{values[s, t]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if values[s, t] < 0.6 else "black")
    fig.colorbar(shown, ax=ax, label=label)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


#: the distortion measures on the x axes of :func:`success_vs_budget`
BUDGETS = (("l0_fraction", "L0 (fraction of features changed)"), ("l2", "L2"), ("linf", "Linf"))


def budget_curve(distortion: Tensor, success: Tensor, budgets: Tensor) -> Tensor:
    """Success rate within each budget: the fraction of samples that succeeded with
    distortion at most the budget (the distortion of failures counts as infinite)."""
    reached = torch.where(success.bool(), distortion.double(), torch.full_like(distortion.double(), float("inf")))
    if reached.numel() == 0:
        return torch.full((budgets.numel(),), float("nan"), dtype=torch.float64)
    return (reached[None, :] <= budgets.double()[:, None]).double().mean(dim=1)


def success_vs_budget(
    curves: dict[str, dict[str, Tensor]], path: str | Path, title: str | None = None, points: int = 100,
) -> Path:
    """Success rate against distortion budget, one line per attack, one panel per norm.

    ``curves`` maps a label to ``{"success": (N,) bool, "l0_fraction": ..., "l2": ..., "linf": ...}``.
    """
    fig, axes = plt.subplots(1, len(BUDGETS), figsize=(4.0 * len(BUDGETS), 3.2), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], BUDGETS, strict=True):
        top = max((float(c[key][c["success"].bool()].max()) for c in curves.values() if bool(c["success"].any())),
                  default=1.0) or 1.0
        budgets = torch.linspace(0, top * 1.05, points)
        for name, c in curves.items():
            ax.plot(budgets.numpy(), budget_curve(c[key], c["success"], budgets).numpy(), label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def explanation_overlay(
    x: Tensor, heat: Tensor, labels: Tensor, path: str | Path, class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Each image with its attribution map laid over it (channels summed, absolute, scaled per image)."""
    n = x.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.4, 3.2), squeeze=False)
    heat = heat.detach().float().cpu()
    maps = heat.abs().sum(dim=1) if heat.dim() == 4 else heat.abs()
    cmap = "gray" if x.shape[1] == 1 else None
    for i in range(n):
        peak = float(maps[i].max()) or 1.0
        axes[0, i].imshow(to_image(x[i]), cmap=cmap, vmin=0, vmax=1)
        if labels.dim() == 1:  # class labels; a segmentation mask gets no title
            axes[0, i].set_title(class_label(class_names, int(labels[i])), fontsize=8)
        axes[1, i].imshow(to_image(x[i]), cmap=cmap, vmin=0, vmax=1)
        axes[1, i].imshow(maps[i].numpy() / peak, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        for ax in axes[:, i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


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
    from salmap.evaluation.seg_figures import segmentation_grid

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


__all__ = [
    "BUDGETS", "adversarial_grid", "budget_curve", "explanation_overlay", "pair_heatmap", "pair_rates", "run_figures",
    "source_target_grid", "success_vs_budget", "to_image",
]
