"""Adversarial training in the three forms the literature compares, each named after its paper.

- ``"goodfellow"``: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial
  Examples", ICLR 2015, §6: ``alpha * J(x, y) + (1 - alpha) * J(x_adv, y)`` with FGSM
  examples ``x_adv`` of the current model; ``alpha = 0.5`` and, on MNIST, ``eps = 0.25``.
- ``"madry"``: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018, §4-5: the loss of PGD examples only (the
  saddle-point problem's inner maximum), PGD from a uniform random start in the ball; on
  MNIST ``eps = 0.3``, 40 steps of 0.01 (their ``mnist_challenge/config.json``).
- ``"trades"``: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled
  Trade-off between Robustness and Accuracy", ICML 2019 (TRADES), Eq. (5) and Algorithm 1:
  ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` where ``x_adv`` maximises that KL term by
  sign-gradient ascent from ``x + 0.001 * N(0, 1)`` (their ``trades.py``: model in eval mode
  while crafting, KL summed over the batch and divided by its size, gradients through both
  terms); ``beta = 6``, on MNIST ``eps = 0.3``, 40 steps of 0.01 (``train_trades_mnist.py``).

All three papers attack at the full ``eps`` from the first batch. ``eps_warmup`` (off by
default) is a deviation from them: the radius grows linearly from ``eps / warmup`` to ``eps``
over the first batches (the step size with it), a curriculum of the kind Gowal et al. 2018
(IBP) use. It is for short training budgets (Madry et al. train for 100,000 batches of 50):
measured on 1,000 MNIST-sample images, batch 64, Adam 1e-3, a fresh lenet in mode ``"madry"``
still predicted one class for every image (loss 2.30, 8% clean accuracy) after 80 batches at
``eps = 0.3``; with the radius grown over the first 64 batches it reached 88.5% clean accuracy
and 47% under PGD-40 at ``eps = 0.3`` after those 64, and 89% / 50% after 96.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from salmap._validate import (
    BoundsLike,
    check_bounds,
    check_choice,
    check_input,
    check_number,
)
from salmap.attacks import FGSM, PGD, Attack
from salmap.gradients import frozen
from salmap.training import BatchHook, TrainReport, train_classifier

#: the adversarial-training modes, named after their papers.
MODES = ("goodfellow", "madry", "trades")


@dataclass(frozen=True)
class Recipe:
    """The published settings of a mode (MNIST): Linf radius, attack steps and step size, and
    the weights ``alpha`` (Goodfellow) and ``beta`` (TRADES)."""

    eps: float
    steps: int
    step: float
    alpha: float = 0.5
    beta: float = 6.0


#: the published MNIST settings of every mode (see the module docstring for the sources).
PUBLISHED = {
    "goodfellow": Recipe(eps=0.25, steps=1, step=0.25, alpha=0.5),
    "madry": Recipe(eps=0.3, steps=40, step=0.01),
    "trades": Recipe(eps=0.3, steps=40, step=0.01, beta=6.0),
}


def training_attack(
    name: str, model: nn.Module, eps: float, steps: int = 10, seed: int = 0, bounds: BoundsLike = (0.0, 1.0)
) -> Attack:
    """An attack for making training examples: FGSM, or PGD with ``steps`` steps of
    ``2.5 * eps / steps`` (so that the steps together can cross the ball) from a random start
    seeded by ``seed`` (used by :func:`salmap.defenses.denoiser.train_denoiser`)."""
    if check_choice("attack", name, ("fgsm", "pgd")) == "fgsm":
        return FGSM(model, eps=eps, bounds=bounds)
    return PGD(model, eps=eps, step=2.5 * eps / steps, steps=steps, seed=seed, bounds=bounds)


def recipe(mode: str, eps: float | None = None, steps: int | None = None, step: float | None = None,
           alpha: float | None = None, beta: float | None = None) -> Recipe:
    """The published :class:`Recipe` of ``mode`` with the given settings replacing its defaults."""
    base = PUBLISHED[check_choice("mode", mode, MODES)]
    eps = base.eps if eps is None else float(check_number("eps", eps, low=0.0))
    if steps is None:
        steps = base.steps
    check_number("steps", steps, low=1, integer=True)
    if step is None:
        step = eps if mode == "goodfellow" else base.step
    check_number("step", step, low=0.0, low_open=True)
    alpha = base.alpha if alpha is None else float(check_number("alpha", alpha, low=0.0, high=1.0))
    beta = base.beta if beta is None else float(check_number("beta", beta, low=0.0))
    return Recipe(eps=eps, steps=steps, step=step, alpha=alpha, beta=beta)


def kl_perturbation(model: nn.Module, x: Tensor, eps: float, step: float, steps: int,
                    generator: torch.Generator, bounds: BoundsLike = (0.0, 1.0)) -> Tensor:
    """TRADES' inner maximisation: ``x_adv`` in the ``eps``-ball maximising
    ``KL(softmax f(x) || softmax f(x_adv))``, by ``steps`` sign-gradient steps of ``step`` from
    ``x + 0.001 * N(0, 1)`` (noise from ``generator``), with ``model`` frozen in eval mode."""
    bounds = check_bounds(bounds)
    with frozen(model):
        with torch.no_grad():
            p_clean = torch.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = bounds.clamp(x + 0.001 * noise)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                kl = nn.functional.kl_div(torch.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = bounds.clamp(torch.min(torch.max(x_adv, x - eps), x + eps))
    return x_adv.detach()


def warmup_eps(eps: float, batch: int, warmup: int) -> float:
    """The radius at (0-based) ``batch`` when it grows linearly to ``eps`` over ``warmup``
    batches: ``eps * (batch + 1) / warmup`` until it reaches ``eps`` (``warmup = 0``: always ``eps``)."""
    return eps if warmup <= 0 else eps * min(1.0, (batch + 1) / warmup)


def adversarial_hook(
    mode: str = "goodfellow", eps: float | None = None, steps: int | None = None, step: float | None = None,
    seed: int = 0, bounds: BoundsLike = (0.0, 1.0), warmup: int = 0,
) -> BatchHook:
    """A :data:`salmap.training.BatchHook` that makes each batch's adversarial examples.

    ``"goodfellow"`` and ``"trades"`` return ``[x; x_adv]`` with labels ``[y; y]`` (the loss
    of :func:`adversarial_loss` splits them again); ``"madry"`` returns ``x_adv`` alone. The
    examples are crafted on the model being trained, as it is at that step, in eval mode.
    ``warmup`` (batches, default 0: none; not in the papers) grows the radius and the step
    size linearly over the first ``warmup`` calls (:func:`warmup_eps`).
    """
    r = recipe(mode, eps, steps, step)
    bounds = check_bounds(bounds)
    check_number("warmup", warmup, low=0, integer=True)
    calls = [0]
    gen = torch.Generator().manual_seed(seed)

    def hook(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        xb = bounds.clamp(xb)
        radius = warmup_eps(r.eps, calls[0], warmup)
        size = r.step * radius / r.eps if r.eps > 0 else r.step
        batch = calls[0]
        calls[0] += 1
        if mode == "goodfellow":
            x_adv = FGSM(model, eps=radius, bounds=bounds)(xb, y=yb).x_adv
        elif mode == "madry":
            # A new seed per batch: the random starts of the epochs' repeated images differ.
            pgd = PGD(model, eps=radius, step=size, steps=r.steps, seed=seed + batch, bounds=bounds)
            return pgd(xb, y=yb).x_adv, yb
        else:
            x_adv = kl_perturbation(model, xb, radius, size, r.steps, gen, bounds)
        return torch.cat([xb, x_adv]), torch.cat([yb, yb])

    return hook


def adversarial_loss(mode: str = "goodfellow", alpha: float = 0.5, beta: float = 6.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of ``mode`` over the batch :func:`adversarial_hook` assembled."""
    check_choice("mode", mode, MODES)

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        if mode == "madry":
            return nn.functional.cross_entropy(logits, labels)
        half = logits.shape[0] // 2
        clean, adv, y = logits[:half], logits[half:], labels[:half]
        if mode == "goodfellow":
            return alpha * nn.functional.cross_entropy(clean, y) + (1 - alpha) * nn.functional.cross_entropy(adv, y)
        robust = nn.functional.kl_div(torch.log_softmax(adv, dim=1), torch.softmax(clean, dim=1), reduction="sum")
        return nn.functional.cross_entropy(clean, y) + beta * robust / half

    return loss


def adversarial_training(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    mode: str = "goodfellow",
    eps: float | None = None,
    steps: int | None = None,
    step: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    bounds: BoundsLike = (0.0, 1.0),
    progress: bool = True,
    eps_warmup: float = 0.0,
) -> TrainReport:
    """Train ``model`` (in place) adversarially, the way the paper that ``mode`` names does.

    Parameters
    ----------
    model: the classifier to train, usually freshly initialised.
    x, y: training images and labels.
    mode: ``"goodfellow"`` (FGSM, mixed loss), ``"madry"`` (PGD examples only) or ``"trades"``
        (clean cross-entropy plus ``beta`` times the KL divergence to the KL-maximising example);
        see the module docstring for the sources.
    eps, steps, step: Linf radius, attack iterations and step size; default: the mode's
        published MNIST settings (:data:`PUBLISHED`: 0.25 / 1 / 0.25, 0.3 / 40 / 0.01, 0.3 / 40 / 0.01).
    alpha: weight of the clean loss for ``"goodfellow"`` (default 0.5).
    beta: weight of the robust term for ``"trades"`` (default 6).
    epochs, batch_size, lr, seed, progress: as in :func:`salmap.training.train_classifier`
        (which also applies its random-shift augmentation, as for the undefended model).
    x_test, y_test: optional test set for the report's clean accuracy.
    bounds: valid input range.
    eps_warmup: epochs over which the radius (and step size) grow linearly from nearly 0 to
        ``eps``; default 0, as in the papers. Not part of any of them: a curriculum for short
        budgets (see the module docstring), to be reported as a deviation when used.

    Returns
    -------
    The :class:`salmap.training.TrainReport` (training time included).

    Examples
    --------
    >>> report = adversarial_training(build("lenet"), x_train, y_train, mode="madry")  # doctest: +SKIP
    >>> report = adversarial_training(build("lenet"), x_train, y_train, mode="trades", beta=1.0)  # doctest: +SKIP
    """
    bounds = check_bounds(bounds)
    check_input(x, bounds, min_dim=2)
    r = recipe(mode, eps, steps, step, alpha, beta)
    check_number("eps_warmup", eps_warmup, low=0.0)
    check_number("batch_size", batch_size, low=1, integer=True)
    warmup = math.ceil(eps_warmup * math.ceil(x.shape[0] / batch_size))
    hook = adversarial_hook(mode, r.eps, r.steps, r.step, seed, bounds, warmup=warmup)
    return train_classifier(model, x, y, x_test, y_test, epochs=epochs, batch_size=batch_size, lr=lr,
                            seed=seed, progress=progress, batch_hook=hook,
                            loss_fn=adversarial_loss(mode, r.alpha, r.beta))
