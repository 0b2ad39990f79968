"""Figures for segmentation attacks (PNG, matplotlib Agg): one row per image."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from salmap.plot.common import plt, save_figure, to_image

COLUMNS = ("input", "prediction", "target mask", "adversarial input", "adversarial prediction", "perturbation")


def segmentation_grid(
    x: Tensor,
    pred: Tensor,
    target: Tensor,
    x_adv: Tensor,
    pred_adv: Tensor,
    path: str | Path,
    num_classes: int,
    rows: int = 8,
    title: str | None = None,
    captions: list[str] | None = None,
) -> Path:
    """A PNG with one row per image: input, prediction, target mask, adversarial input,
    adversarial prediction and perturbation.

    Parameters
    ----------
    x, x_adv: inputs ``(B, C, H, W)`` in ``[0, 1]``.
    pred, target, pred_adv: class-index masks ``(B, h, w)``.
    path: where to write the PNG.
    num_classes: classes of the masks (fixes the colour of each class across panels).
    rows: at most this many images.
    title: figure title.
    captions: one line per row (e.g. pixel accuracy and L0), shown over the adversarial prediction.

    Returns
    -------
    The path written.
    """
    n = min(rows, x.shape[0])
    if n == 0:
        raise ValueError("x must hold at least one image to draw, got an empty batch")
    cmap_masks = "tab20" if num_classes > 10 else "tab10"
    fig, axes = plt.subplots(n, len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.1 * n + 0.5), squeeze=False)
    for r in range(n):
        delta = (x_adv[r] - x[r]).detach().float().cpu()
        lim = float(delta.abs().max()) or 1.0
        gray = "gray" if x.shape[1] == 1 else None
        panels = [
            (to_image(x[r]), gray, 0, 1),
            (pred[r].cpu().numpy(), cmap_masks, 0, max(num_classes - 1, 1)),
            (target[r].cpu().numpy(), cmap_masks, 0, max(num_classes - 1, 1)),
            (to_image(x_adv[r]), gray, 0, 1),
            (pred_adv[r].cpu().numpy(), cmap_masks, 0, max(num_classes - 1, 1)),
            (delta.mean(dim=0).numpy(), "seismic", -lim, lim),
        ]
        for c, (img, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.axis("off")
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
        if captions is not None and r < len(captions):
            axes[r, 4].text(0.5, -0.08, captions[r], transform=axes[r, 4].transAxes, ha="center", va="top",
                            fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["segmentation_grid"]
