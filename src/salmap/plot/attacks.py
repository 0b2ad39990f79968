"""Pictures of attacks: adversarial grids, the JSMA source-target grid and its success heatmap,
success rate against distortion budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from salmap.metrics import budget_curve
from salmap.plot.common import class_label, plt, save_figure, to_image

#: the distortion measures on the x axes of :func:`success_vs_budget`
BUDGETS = (("l0_fraction", "L0 (fraction of features changed)"), ("l2", "L2"), ("linf", "Linf"))

__all__ = [
    "BUDGETS", "adversarial_grid", "pair_heatmap", "source_target_figures", "source_target_grid", "success_vs_budget",
]


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


def source_target_figures(
    rates: Tensor, success: Tensor, x_adv: Tensor, labels: Tensor, targets: Tensor, source: Tensor, images: Tensor,
    out: Path, class_names: Sequence[str] | None, title: str,
) -> list[Path]:
    """The pictures of a run over every source-target pair (``--targeted all``).

    Writes ``pairs.png`` (``rates``, the ``(K, K)`` success rate per pair) and, when every
    class has an image, ``source-target.png`` (Papernot et al.'s figure: the first image of
    each class attacked towards every other class).

    Parameters
    ----------
    rates: ``(K, K)`` success rate per (source, target) pair.
    success, x_adv, labels, targets, source: per attacked row: success flags, adversarial
        input, true class, target class and the index of its image in ``images``.
    images: the clean images the rows were made from.
    out: folder to write into.

    Returns
    -------
    list of Path: the pictures written.
    """
    k = rates.shape[0]
    labels, targets, source = labels.cpu(), targets.cpu(), source.cpu()
    written = [pair_heatmap(rates, out / "pairs.png", class_names, title=f"{title}\nsuccess per source-target pair")]
    firsts = [int(source[(labels == c).nonzero()[0, 0]]) for c in range(k) if (labels == c).any()]
    if len(firsts) == k:
        rows = {c: (source == s).nonzero().flatten() for c, s in enumerate(firsts)}
        adversarial = {(c, int(targets[i])): x_adv[i].cpu() for c, r in rows.items() for i in r.tolist()}
        won = {(c, int(targets[i])): bool(success[i]) for c, r in rows.items() for i in r.tolist()}
        sources = torch.stack([images[s] for s in firsts])
        written.append(source_target_grid(sources, adversarial, out / "source-target.png", class_names, won,
                                          title=f"{title}\n(rows: source, columns: target)"))
    return written
