"""FGSM (Goodfellow et al. 2014) and its iterative forms, BIM (Kurakin et al. 2016) and PGD
(Madry et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from salmap._validate import Bounds, check_number
from salmap.attacks.base import Attack
from salmap.gradients import Model, loss_grad
from salmap.registry import register_attack

LossFn = Callable[[Tensor, Tensor], Tensor]


@register_attack("fgsm", ranges={"eps": "[0, inf)"})
class FGSM(Attack):
    """Fast Gradient Sign Method: one step of size ``eps`` along the sign of the loss gradient.

    Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", 2014.
    Untargeted (``y``): ``x + eps * sign(grad loss(x, y))``. Targeted (``target``):
    ``x - eps * sign(grad loss(x, target))``. The result is clipped to ``bounds``.

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``.
    eps: step size (Linf budget), ``>= 0``.
    loss_fn: per-sample loss ``loss_fn(logits, labels) -> (B,)``; cross-entropy by default.
    bounds: valid input range ``(low, high)``. Default ``(0.0, 1.0)``.

    Examples
    --------
    >>> result = FGSM(model, eps=0.1)(x, y=y)          # doctest: +SKIP
    >>> result.x_adv, result.success, result.linf      # doctest: +SKIP
    """

    def __init__(
        self, model: Model, eps: float = 0.1, loss_fn: LossFn | None = None, bounds: Bounds = (0.0, 1.0)
    ) -> None:
        super().__init__(model, bounds)
        self.eps = float(check_number("eps", eps, low=0.0))
        self.loss_fn = loss_fn

    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        _, grad = loss_grad(self.model, x, labels, self.loss_fn)
        direction = -1.0 if targeted else 1.0
        x_adv = (x + direction * self.eps * grad.sign()).clamp(*self.bounds)
        return x_adv, torch.ones(x.shape[0], dtype=torch.long, device=x.device)


@register_attack("pgd", ranges={"eps": "[0, inf)", "step": "(0, inf)", "steps": "[1, inf)"})
class PGD(Attack):
    """Projected gradient descent in the Linf ball (iterative FGSM with projection).

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", 2017.
    Each step moves by ``step`` along the sign of the loss gradient, then projects onto
    the ``eps``-ball around the clean input and onto the bounds. ``random_start`` begins
    at a uniform point in the ball (reproducible with ``seed``). Samples that reach
    the goal stop early when ``early_stop`` is set (then fewer gradient evaluations are spent).

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``.
    eps: Linf radius, ``>= 0``.
    step: step size per iteration, ``> 0``. Default ``eps / 4``.
    steps: number of iterations, ``>= 1``.
    random_start: start from a random point of the ball.
    seed: seed of the random start.
    loss_fn: per-sample loss; cross-entropy by default.
    early_stop: stop samples as soon as they succeed.
    bounds: valid input range.
    """

    def __init__(
        self,
        model: Model,
        eps: float = 0.3,
        step: float | None = None,
        steps: int = 40,
        random_start: bool = True,
        seed: int = 0,
        loss_fn: LossFn | None = None,
        early_stop: bool = False,
        bounds: Bounds = (0.0, 1.0),
    ) -> None:
        super().__init__(model, bounds)
        self.eps = float(check_number("eps", eps, low=0.0))
        self.step = float(check_number("step", eps / 4 if step is None else step, low=0.0, low_open=eps > 0))
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.random_start = bool(random_start)
        self.seed = check_number("seed", seed, integer=True)
        self.loss_fn = loss_fn
        self.early_stop = bool(early_stop)

    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.bounds
        direction = -1.0 if targeted else 1.0
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            noise = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            x_adv = (x + (2 * noise - 1) * self.eps).clamp(low, high)
        iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            logits, grad = loss_grad(self.model, x_adv[active], labels[active], self.loss_fn)
            if self.early_stop:
                pred = logits.argmax(dim=1)
                done = pred == labels[active] if targeted else pred != labels[active]
                active, grad = active[~done], grad[~done]
                if active.numel() == 0:
                    break
            moved = x_adv[active] + direction * self.step * grad.sign()
            x0 = x[active]
            moved = torch.max(torch.min(moved, x0 + self.eps), x0 - self.eps).clamp(low, high)
            x_adv[active] = moved
            iterations[active] += 1
        return x_adv, iterations


@register_attack("bim", ranges={"eps": "[0, inf)", "step": "(0, inf)", "steps": "[1, inf)"})
class BIM(PGD):
    """Basic Iterative Method (Kurakin et al. 2016): PGD without the random start.

    Parameters are those of :class:`PGD`; ``random_start`` is always off.
    """

    def __init__(
        self,
        model: Model,
        eps: float = 0.3,
        step: float | None = None,
        steps: int = 10,
        loss_fn: LossFn | None = None,
        early_stop: bool = False,
        bounds: Bounds = (0.0, 1.0),
    ) -> None:
        super().__init__(
            model, eps=eps, step=step, steps=steps, random_start=False, loss_fn=loss_fn,
            early_stop=early_stop, bounds=bounds,
        )
