"""The model's outputs on an attack's clean batch: computed with an error that names what went
wrong, and refused when they are not finite (an attack's success cannot be judged on them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salmap.gradients import Model, predict_checked


def first_forward(model: Model, x: Tensor, check: bool = True) -> Tensor:
    """The model's outputs on the clean batch, or a ``ValueError`` that says what went wrong:
    a model that cannot take ``x`` (3-D input, wrong image size) is named with ``x``'s shape,
    and non-finite outputs are refused (an attack's success cannot be judged on NaN logits)."""
    out = predict_checked(model, x)
    if check:
        check_finite_outputs(out, "clean")
    return out


def check_finite_outputs(out: Tensor, which: str) -> None:
    """Refuse NaN/inf model outputs: one sum and one host sync when they are finite (a NaN or
    an infinity makes the sum non-finite; a sum that overflowed is checked element-wise)."""
    if math.isfinite(float(out.detach().sum())):
        return
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).flatten(1).any(dim=1).sum()) if out.dim() > 1 else -1
        raise ValueError(
            f"the model returned NaN or infinite outputs on {bad} of {out.shape[0]} {which} inputs; "
            "success cannot be judged on them (check the model and its input range)"
        )


__all__ = ["check_finite_outputs", "first_forward"]
