"""Pictures of explanations: heatmap overlays (PNG), methods side by side, before/after an attack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salmap._validate import check_bounds
from salmap.plot.common import class_label, plt, save_figure, to_image

__all__ = ["attack_grid", "explanation_grid", "explanation_overlay", "overlay", "to_heat"]


def to_heat(maps: Tensor) -> Tensor:
    """Attribution maps ``(B, C, H, W)`` to one ``(B, H, W)`` heat map per sample, for display.

    Non-negative maps take the maximum over channels (Simonyan et al. 2014); signed maps
    sum over channels (contributions of the channels of one pixel add up).
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, C, H, W) to draw, got shape {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    if maps.shape[1] == 1:
        return maps[:, 0]
    return maps.amax(dim=1) if bool((maps >= 0).all()) else maps.sum(dim=1)


def _limits(*heats: Tensor) -> tuple[float, float, str]:
    """Colour limits and map shared by ``heats``: 0..max for non-negative maps, symmetric otherwise."""
    low = min(float(h.min()) for h in heats)
    high = max(float(h.abs().max()) for h in heats) or 1.0
    if low >= 0:
        return 0.0, high, "jet"
    return -high, high, "seismic"


def overlay(ax: Any, image: Tensor, heat: Tensor, limits: tuple[float, float, str] | None = None,
            alpha: float = 0.5, bounds: Any = (0.0, 1.0)) -> None:
    """Draw ``heat`` ``(H, W)`` over ``image`` ``(C, H, W)`` on the matplotlib axes ``ax``."""
    pixels = image.detach().float().cpu()[None]
    low, high = check_bounds(bounds).like(pixels)
    img = np.asarray(to_image(((pixels - low) / (high - low))[0]))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    vmin, vmax, cmap = limits or _limits(heat)
    ax.imshow(heat.detach().float().cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha)
    ax.axis("off")


def explanation_grid(
    x: Tensor,
    maps: Mapping[str, Tensor],
    path: str | Path,
    labels: Tensor | None = None,
    preds: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    rows: int = 8,
    title: str | None = None,
    bounds: Any = (0.0, 1.0),
) -> Path:
    """One row per sample: the input, then each method's heat map over it, side by side.

    Parameters
    ----------
    x: inputs ``(B, C, H, W)``.
    maps: method name to attribution maps ``(B, C', H, W)`` (``C'`` may be 1).
    path: PNG file to write.
    labels, preds: optional true labels and predictions ``(B,)`` shown over the input.
    class_names: names for the class indices.
    rows: at most this many samples.
    bounds: input range, to display the input.

    Returns
    -------
    Path: the PNG written.
    """
    n = min(rows, x.shape[0])
    heats = {name: to_heat(m) for name, m in maps.items()}
    cols = 1 + len(heats)
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.2 * n + 0.4), squeeze=False)
    for r in range(n):
        overlay(axes[r, 0], x[r], torch.zeros(x.shape[-2:]), alpha=0.0, bounds=bounds)
        caption = []
        if labels is not None:
            caption.append(f"true {class_label(class_names, labels[r])}")
        if preds is not None:
            caption.append(f"pred {class_label(class_names, preds[r])}")
        axes[r, 0].set_title(", ".join(caption) or "input", fontsize=8)
        for c, (name, heat) in enumerate(heats.items(), start=1):
            overlay(axes[r, c], x[r], heat[r], bounds=bounds)
            axes[r, c].set_title(name, fontsize=8)
    return save_figure(fig, path, title, tight=True)


def attack_grid(
    x: Tensor,
    x_adv: Tensor,
    before: Mapping[str, Tensor],
    after: Mapping[str, Tensor],
    path: str | Path,
    pred_before: Tensor | None = None,
    pred_after: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    rows: int = 8,
    title: str | None = None,
    bounds: Any = (0.0, 1.0),
) -> Path:
    """One row per sample: clean input and its maps, then the adversarial input and its maps.

    A method's map before and after the attack share one colour scale, so that a
    change of colour is a change of attribution.

    Parameters
    ----------
    x, x_adv: clean and adversarial inputs ``(B, C, H, W)``.
    before, after: method name to maps of ``x`` and of ``x_adv`` (same keys).
    path: PNG file to write.
    pred_before, pred_after: optional predictions ``(B,)`` on ``x`` and ``x_adv``.

    Returns
    -------
    Path: the PNG written.
    """
    if set(before) != set(after):
        raise ValueError(f"before and after must name the same methods, got {sorted(before)} and {sorted(after)}")
    n = min(rows, x.shape[0])
    hb = {k: to_heat(v) for k, v in before.items()}
    ha = {k: to_heat(after[k]) for k in before}
    cols = 2 * (1 + len(hb))
    fig, axes = plt.subplots(n, cols, figsize=(2.0 * cols, 2.2 * n + 0.4), squeeze=False)
    blank = torch.zeros(x.shape[-2:])
    for r in range(n):
        half = 1 + len(hb)
        for side, (img, heats, pred, name) in enumerate(
            [(x, hb, pred_before, "clean"), (x_adv, ha, pred_after, "adversarial")]
        ):
            col = side * half
            overlay(axes[r, col], img[r], blank, alpha=0.0, bounds=bounds)
            axes[r, col].set_title(name + (f": pred {class_label(class_names, pred[r])}" if pred is not None else ""),
                                   fontsize=8)
            for c, method in enumerate(hb, start=1):
                limits = _limits(hb[method][r], ha[method][r])
                overlay(axes[r, col + c], img[r], heats[method][r], limits, bounds=bounds)
                axes[r, col + c].set_title(f"{method} ({'after' if side else 'before'})", fontsize=8)
    return save_figure(fig, path, title, tight=True)


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
