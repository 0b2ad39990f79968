"""The model's outputs on an attack's clean batch: computed with an error that names what went
wrong, and refused when they are not finite (an attack's success cannot be judged on them)."""

from __future__ import annotations

import math
import warnings

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
    an infinity makes the sum non-finite; a sum that overflowed is checked element-wise). The
    clean outputs of a classifier are also looked at for probabilities (:func:`judge_outputs`),
    in the same read."""
    judge_outputs(out, (torch.cat(output_numbers(out)) if which == "clean" else out.detach().sum()).reshape(-1).tolist(),
                  which)


def output_numbers(out: Tensor, probe: bool = True) -> tuple[Tensor, ...]:
    """The numbers :func:`judge_outputs` needs, queued on ``out``'s device (no sync) as 1-element
    tensors for the caller's one ``cat`` (no stack of their own: on a GPU each kernel is a launch):
    the sum, or for a classifier's ``(B, K >= 2)`` outputs the smallest and largest row sum and the
    smallest output (a NaN or an infinity makes a row sum non-finite too). ``probe=False``: the sum
    only (an attack looks for probabilities on its first call: its model is the same on the next)."""
    out = out.detach()
    if not probe or out.dim() != 2 or out.shape[1] < 2:
        return (out.sum().reshape(1),)
    low, high = torch.aminmax(out.sum(dim=1))
    return low.reshape(1), high.reshape(1), out.amin().reshape(1)


def judge_outputs(out: Tensor, numbers: list[float], which: str = "clean") -> None:
    """Raise for non-finite outputs and warn for probabilities, given :func:`output_numbers` read."""
    finite = all(math.isfinite(n) for n in numbers[:2])
    if not finite and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).flatten(1).any(dim=1).sum()) if out.dim() > 1 else -1
        raise ValueError(
            f"the model returned NaN or infinite outputs on {bad} of {out.shape[0]} {which} inputs; "
            "success cannot be judged on them (check the model and its input range)"
        )
    if len(numbers) == 3 and numbers[2] >= 0 and 1 - 1e-3 <= numbers[0] <= numbers[1] <= 1 + 1e-3:
        # as AutoAttack's checks: a loss on probabilities saturates, and the attack is weaker than it looks
        warnings.warn(
            f"the model's outputs on the {which} batch look like probabilities (every row >= 0 and summing to 1): "
            "salmap's attacks expect logits, and on probabilities their gradients vanish and the attack "
            "is weaker than it should be; pass the model without its final softmax (or the log of its outputs)",
            UserWarning, stacklevel=2,
        )


__all__ = ["check_finite_outputs", "first_forward", "judge_outputs", "output_numbers"]
