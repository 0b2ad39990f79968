"""Evaluation: plan -> execute -> store -> summary -> figures -> report, and reading results back."""

from salmap.evaluation.adversarial import load_adversarial
from salmap.evaluation.metrics import accuracy, distortion
from salmap.evaluation.store import read_results

__all__ = ["accuracy", "distortion", "load_adversarial", "read_results"]
