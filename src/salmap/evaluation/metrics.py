"""The metrics moved to :mod:`salmap.metrics` (floor 1); this module re-exports them."""

from salmap.metrics import (
    accuracy,
    budget_curve,
    confusion_matrix,
    distortion,
    iou_per_class,
    mask_from_output,
    mean_iou,
    pair_rates,
    pixel_accuracy,
    segmentation_iou,
)

__all__ = [
    "accuracy", "budget_curve", "confusion_matrix", "distortion", "iou_per_class", "mask_from_output", "mean_iou",
    "pair_rates", "pixel_accuracy", "segmentation_iou",
]
