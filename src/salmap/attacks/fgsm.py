"""FGSM (Goodfellow et al. 2014): one signed gradient step.

Its iterative forms live beside it: :class:`~salmap.attacks.pgd.PGD` (Madry et al. 2017) in
``pgd.py`` and :class:`~salmap.attacks.bim.BIM` (Kurakin et al. 2016) in ``bim.py``; both are
importable from here as before.
"""

from __future__ import annotations

from torch import Tensor

from salmap._validate import BoundsLike, check_number
from salmap.attacks.base import Attack
from salmap.attacks.bim import BIM
from salmap.attacks.pgd import PGD
from salmap.gradients import LossFn, Model, RecordedPass, loss_grad
from salmap.precision import PRECISIONS, check_precision
from salmap.registry import register_attack


@register_attack("fgsm", ranges={"eps": "[0, inf)"}, choices={"precision": PRECISIONS}, budget={"linf": "eps"})
class FGSM(Attack):
    """Fast Gradient Sign Method: one step of size ``eps`` along the sign of the loss gradient.

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", 2014.
    Untargeted (``y``): ``x + eps * sign(grad loss(x, y))``. Targeted (``target``):
    ``x - eps * sign(grad loss(x, target))``. The result is clipped to ``bounds``. The call
    costs one forward and one backward pass (the forward pass is also the clean prediction).

    Zero gradients: ``sign(0) = 0`` (``torch.sign``, as in torchattacks), so a feature whose
    loss gradient is exactly zero is not moved. Where the gradient is within rounding error of
    zero its sign depends on how the floating-point sums were rounded, so such a feature can
    move by ``+eps`` in one computation and ``-eps`` in another (results ``2 * eps`` apart).
    salmap differentiates the batch mean of the per-sample losses, the reduction torchattacks
    (``nn.CrossEntropyLoss()``) uses, so both round alike (with ``precision="fp16"`` the sum,
    since float16 gradients divided by the batch size would underflow to zero): on an H100
    the sum instead of the
    mean left 40 of 784,000 elements different from torchattacks (4 by ``2 * eps``, at
    gradients of at most 3e-5), the mean none. Between a GPU and the CPU the rounding differs
    anyway (cuDNN's algorithms, TF32 convolutions by default on Ampere and later): each
    library's GPU result differs from its CPU result at the same near-zero features
    (``torch.backends.cudnn.allow_tf32 = False`` and ``torch.backends.cudnn.deterministic =
    True`` narrow it; ``benchmarks/gpu.py`` counts them). On the CPU salmap and torchattacks
    agree element for element.

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``.
    eps: step size (Linf budget), ``>= 0``.
    loss_fn: per-sample loss ``loss_fn(logits, labels) -> (B,)``; cross-entropy by default.
    bounds: valid input range ``(low, high)``. Default ``(0.0, 1.0)``.
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward and backward passes
        under autocast (see :mod:`salmap.precision`): faster on a GPU for large models, with
        gradient signs that differ from float32's where the gradient is small.

    Examples
    --------
    >>> result = FGSM(model, eps=0.1)(x, y=y)          # doctest: +SKIP
    >>> result.x_adv, result.success, result.linf      # doctest: +SKIP
    """

    def __init__(
        self, model: Model, eps: float = 0.1, loss_fn: LossFn | None = None, bounds: BoundsLike = (0.0, 1.0),
        precision: str = "fp32",
    ) -> None:
        super().__init__(model, bounds)
        self.eps = float(check_number("eps", eps, low=0.0))
        self.loss_fn = loss_fn
        self.precision = check_precision(precision)

    def _gradient_at_clean_input(self) -> bool:
        return True

    def _checks_outputs_after_run(self) -> bool:
        return True  # one forward and one backward pass: nothing to synchronise on

    def _run_clamps(self) -> bool:
        return True

    def _run(
        self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor, first: RecordedPass | None = None
    ) -> tuple[Tensor, int]:
        _, grad = loss_grad(self.model, x, labels, self.loss_fn, recorded=first, batch_mean=self.precision != "fp16")
        direction = -1.0 if targeted else 1.0
        x_adv = self.bounds.clamp(x + direction * self.eps * grad.sign())
        return x_adv, 1
__all__ = ["BIM", "FGSM", "PGD", "LossFn"]


#: PGD and BIM stay importable from here, where they were written before they had files.
__all__ = ["BIM", "FGSM", "PGD"]
