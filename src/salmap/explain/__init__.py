"""Explanations: gradient saliency, occlusion, Grad-CAM and LRP, for classifiers and segmenters."""

from salmap.explain.base import Explainer
from salmap.explain.lrp import LRP
from salmap.explain.targets import Target, resolve_target

__all__ = ["LRP", "Explainer", "Target", "resolve_target"]
