"""Explanations: gradient saliency, occlusion, Grad-CAM and LRP, for classifiers and segmenters."""

from salmap.explain.base import Explainer
from salmap.explain.gradcam import GradCAM
from salmap.explain.gradient import GradientSaliency
from salmap.explain.lrp import LRP
from salmap.explain.occlusion import Occlusion
from salmap.explain.targets import Target, resolve_target

__all__ = ["LRP", "Explainer", "GradCAM", "GradientSaliency", "Occlusion", "Target", "resolve_target"]
