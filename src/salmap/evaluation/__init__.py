"""Evaluation: metrics, runs, figures and reports."""

from salmap.evaluation.metrics import accuracy, distortion

__all__ = ["accuracy", "distortion"]
