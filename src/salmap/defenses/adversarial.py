"""Adversarial training: the baseline every defense is measured against.

Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", 2014:
train on ``alpha * J(x, y) + (1 - alpha) * J(x_adv, y)`` with FGSM examples ``x_adv``
crafted on the current model, ``alpha = 0.5``. Madry et al., "Towards Deep Learning
Models Resistant to Adversarial Attacks", 2017, use PGD examples instead.
"""

from __future__ import annotations

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
from salmap.training import BatchHook, TrainReport, train_classifier


def training_attack(
    name: str, model: nn.Module, eps: float, steps: int = 10, seed: int = 0, bounds: BoundsLike = (0.0, 1.0)
) -> Attack:
    """The attack that makes training examples: FGSM, or PGD with ``steps`` steps of ``2.5 * eps / steps``
    (Madry et al.'s ratio) from a random start seeded by ``seed``."""
    if check_choice("attack", name, ("fgsm", "pgd")) == "fgsm":
        return FGSM(model, eps=eps, bounds=bounds)
    return PGD(model, eps=eps, step=2.5 * eps / steps, steps=steps, seed=seed, bounds=bounds)


def adversarial_hook(
    attack: str = "fgsm", eps: float = 0.3, steps: int = 10, seed: int = 0, bounds: BoundsLike = (0.0, 1.0)
) -> BatchHook:
    """A :data:`salmap.training.BatchHook` that appends adversarial copies of every batch.

    The batch becomes ``[x; x_adv]`` with labels ``[y; y]``: the mean cross-entropy over
    it is Goodfellow et al.'s objective with ``alpha = 0.5``. The examples are crafted on
    the model being trained, as it is at that step (in eval mode while crafting).
    """
    check_choice("attack", attack, ("fgsm", "pgd"))
    check_number("eps", eps, low=0.0)
    check_number("steps", steps, low=1, integer=True)
    bounds = check_bounds(bounds)
    calls = [0]

    def hook(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        # A fresh PGD random start per batch, reproducible from the seed.
        crafter = training_attack(attack, model, eps, steps, seed + calls[0], bounds)
        calls[0] += 1
        x_adv = crafter(bounds.clamp(xb), y=yb).x_adv
        return torch.cat([xb, x_adv]), torch.cat([yb, yb])

    return hook


def adversarial_training(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str = "fgsm",
    eps: float = 0.3,
    steps: int = 10,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    bounds: BoundsLike = (0.0, 1.0),
    progress: bool = True,
) -> TrainReport:
    """Train ``model`` (in place) on clean and adversarial examples, half and half.

    Parameters
    ----------
    model: the classifier to train, usually freshly initialised.
    x, y: training images and labels.
    attack: ``"fgsm"`` (Goodfellow et al.) or ``"pgd"`` (Madry et al., ``steps`` steps of
        size ``2.5 * eps / steps`` from a random start).
    eps: Linf radius of the training examples.
    steps: PGD iterations per batch.
    epochs, batch_size, lr, seed, progress: as in :func:`salmap.training.train_classifier`
        (which also applies its random-shift augmentation, as for the undefended model).
    x_test, y_test: optional test set for the report's clean accuracy.
    bounds: valid input range.

    Returns
    -------
    The :class:`salmap.training.TrainReport` (training time included).

    Examples
    --------
    >>> report = adversarial_training(build("lenet"), x_train, y_train, attack="fgsm", eps=0.3)  # doctest: +SKIP
    """
    bounds = check_bounds(bounds)
    check_input(x, bounds, min_dim=2)
    hook = adversarial_hook(attack, eps, steps, seed, bounds)
    return train_classifier(model, x, y, x_test, y_test, epochs=epochs, batch_size=batch_size, lr=lr,
                            seed=seed, progress=progress, batch_hook=hook)
