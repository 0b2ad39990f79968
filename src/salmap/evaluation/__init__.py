"""Evaluation: metrics, runs, figures and reports."""

from salmap.metrics import accuracy, distortion

__all__ = ["accuracy", "distortion"]
