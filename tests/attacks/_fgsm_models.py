"""The linear classifier with known gradients the FGSM / PGD / BIM tests share (``test_fgsm_pgd_bim``,
``test_pgd_restarts``, ``test_fgsm_input_checks``)."""

from __future__ import annotations

import torch
from conftest import LinearClassifier


def linear_model():
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 3.0], [0.0, 0.0, -1.0, 1.0]])
    return LinearClassifier(weight)
