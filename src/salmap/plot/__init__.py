"""Every drawing function of salmap (PNG files through matplotlib's Agg backend).

:mod:`~salmap.plot.attacks` (adversarial grids, source-target grid, per-pair heatmap,
success against budget), :mod:`~salmap.plot.segmentation` (segmentation attack rows),
:mod:`~salmap.plot.explanations` (attribution overlays, methods side by side, before/after
an attack) and :mod:`~salmap.plot.common` (images, class names, saving).
"""

from salmap.plot.attacks import (
    BUDGETS,
    adversarial_grid,
    pair_heatmap,
    source_target_figures,
    source_target_grid,
    success_vs_budget,
)
from salmap.plot.common import class_label, save_figure, to_image
from salmap.plot.explanations import (
    attack_grid,
    explanation_grid,
    explanation_overlay,
    overlay,
    to_heat,
)
from salmap.plot.segmentation import segmentation_grid

__all__ = [
    "BUDGETS", "adversarial_grid", "attack_grid", "class_label", "explanation_grid", "explanation_overlay", "overlay",
    "pair_heatmap", "save_figure", "segmentation_grid", "source_target_figures", "source_target_grid",
    "success_vs_budget", "to_heat", "to_image",
]
