"""What every figure shares: images for imshow, class names, writing a PNG.

matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["class_label", "plt", "save_figure", "to_image"]


def to_image(x: Tensor) -> np.ndarray:
    """``(C, H, W)`` to an ``(H, W)`` or ``(H, W, 3)`` array for imshow."""
    x = x.detach().float().cpu()
    return (x[0] if x.shape[0] == 1 else x[:3].permute(1, 2, 0).clamp(0, 1)).numpy()


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
