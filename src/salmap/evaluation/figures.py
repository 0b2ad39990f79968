"""Figures (PNG, matplotlib): adversarial grids and heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def to_image(x: Tensor) -> Tensor:
    """``(C, H, W)`` to an ``(H, W)`` or ``(H, W, 3)`` array for imshow."""
    x = x.detach().float().cpu()
    return x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0).clamp(0, 1)


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
    names = list(class_names) if class_names else None

    def label(i: Tensor) -> str:
        k = int(i)
        return names[k] if names and k < len(names) else str(k)

    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.4), squeeze=False)
    for r in range(n):
        delta = (x_adv[r] - x[r]).float()
        lim = float(delta.abs().max()) or 1.0
        cmap = "gray" if x.shape[1] == 1 else None
        axes[r, 0].imshow(to_image(x[r]), cmap=cmap, vmin=0, vmax=1)
        axes[r, 0].set_title(f"true {label(y[r])}, pred {label(pred_before[r])}", fontsize=8)
        axes[r, 1].imshow(to_image(x_adv[r]), cmap=cmap, vmin=0, vmax=1)
        axes[r, 1].set_title(f"adversarial: pred {label(pred_after[r])}", fontsize=8)
        axes[r, 2].imshow(delta.mean(dim=0), cmap="seismic", vmin=-lim, vmax=lim)
        axes[r, 2].set_title(f"perturbation (max {lim:.2f})", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["adversarial_grid", "to_image"]
