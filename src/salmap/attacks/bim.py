"""BIM (Kurakin et al. 2016): iterative FGSM from the clean input, that is PGD without a random start."""

from __future__ import annotations

from torch import Tensor

from salmap._validate import BoundsLike
from salmap.attacks.pgd import PGD
from salmap.gradients import LossFn, Model
from salmap.precision import PRECISIONS
from salmap.registry import register_attack


@register_attack("bim", ranges={"eps": "[0, inf)", "step": "(0, inf)", "steps": "[1, inf)"},
                 choices={"precision": PRECISIONS}, budget={"linf": "eps"})
class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2016): PGD without the random start.

    Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World", 2016: steps
    of ``step`` along the sign of the loss gradient from the clean input, clipped to the
    ``eps``-ball and the bounds. Deterministic, so there is nothing to restart.

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``.
    eps: Linf radius, ``>= 0``; a tensor ``(B,)`` gives one radius per sample (Python API only).
    step: step size per iteration, ``> 0``. Default ``eps / 4``.
    steps: number of iterations, ``>= 1``.
    loss_fn: per-sample loss; cross-entropy by default.
    early_stop: stop samples as soon as they succeed.
    bounds: valid input range.
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` forward and backward passes (see :class:`FGSM`).
    """

    def __init__(
        self,
        model: Model,
        eps: float | Tensor = 0.3,
        step: float | None = None,
        steps: int = 10,
        loss_fn: LossFn | None = None,
        early_stop: bool = False,
        bounds: BoundsLike = (0.0, 1.0),
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            model, eps=eps, step=step, steps=steps, random_start=False, loss_fn=loss_fn,
            early_stop=early_stop, bounds=bounds, precision=precision,
        )
