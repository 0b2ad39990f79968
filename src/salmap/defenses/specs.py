"""What a defense is evaluated with: the attacks (:class:`AttackSpec`, the issue's default set) and
the checks that the models are trained (a defense of an untrained model measures nothing)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from salmap import registry
from salmap._validate import Bounds
from salmap.attacks import Attack
from salmap.evaluation.settings import AttackConfig
from salmap.gradients import Model, frozen, predict


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the evaluation: a label, a registered attack (:mod:`salmap.registry`) with
    its parameters, and whether it is targeted (then at random other classes, seeded).

    The parameters are checked against the attack's declarations when the spec is made.
    """

    name: str
    attack: str
    params: Mapping[str, Any] = field(default_factory=dict)
    targeted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", registry.get_attack(self.attack).check(self.params))

    def build(self, model: Model, bounds: Bounds, seed: int) -> Attack:
        """The attack on ``model``; ``seed`` seeds it when it takes one and the spec sets none."""
        entry = registry.get_attack(self.attack)
        params = dict(self.params)
        if "seed" in entry.param_map and "seed" not in params:
            params["seed"] = seed
        attack: Attack = entry.build(model, bounds=bounds, **params)
        return attack

    def config(self) -> AttackConfig:
        """The spec as an attack of a run: targeted specs at seeded random other classes."""
        entry = registry.get_attack(self.attack)
        targets = "random" if self.targeted and "random" in entry.targeting else \
            entry.default_targeting if self.targeted else "none"
        return AttackConfig(name=self.name, attack=self.attack, targets=targets, params=dict(self.params))


def default_attacks(pgd_steps: int = 40, isi_iterations: int = 30) -> list[AttackSpec]:
    """The issue's attack set: FGSM eps 0.1/0.2/0.3; PGD eps 0.3 (``pgd_steps`` steps of 0.01, or of
    ``0.75 / pgd_steps`` when fewer than 40, from a random start); JSMA theta 1, gamma 0.145, targeted at random other classes (Papernot et al.'s
    setting); ISI with the LRP-relevance indicator under L0, ``isi_iterations`` features at most."""
    specs = [AttackSpec(f"fgsm-{eps}", "fgsm", {"eps": eps}) for eps in (0.1, 0.2, 0.3)]
    # Madry et al.'s MNIST setting is 40 steps of 0.01; fewer steps get 2.5 * eps / steps so they still cover the ball.
    step = 0.01 if pgd_steps >= 40 else 2.5 * 0.3 / pgd_steps
    specs.append(AttackSpec("pgd-0.3", "pgd", {"eps": 0.3, "step": step, "steps": pgd_steps}))
    specs.append(AttackSpec("jsma-0.145", "jsma", {"theta": 1.0, "gamma": 0.145}, targeted=True))
    specs.append(AttackSpec("isi-l0", "isi", {"indicator": "relevance", "norm": "l0", "max_iter": isi_iterations}))
    return specs


def check_trained(meta: dict[str, Any], num_classes: int | None = None, name: str = "model") -> float:
    """The test accuracy recorded in a checkpoint's ``model.json``; ``ValueError`` when it is
    missing or near chance (an untrained checkpoint passed as trained)."""
    metrics = meta.get("metrics") or {}
    acc = metrics.get("test_accuracy", metrics.get("accuracy")) if isinstance(metrics, dict) else None
    if not isinstance(acc, (int, float)):
        raise ValueError(
            f"{name} has no test accuracy in its model.json metrics (got {metrics!r}): "
            "pass a trained checkpoint (salmap train writes one)"
        )
    check_accuracy(float(acc), num_classes or len(meta.get("class_names") or []) or 10, name)
    return float(acc)


def model_accuracy(meta: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor, num_classes: int,
                   name: str = "model") -> tuple[float, bool]:
    """The test accuracy of a model to defend: the one its ``model.json`` records (checked by
    :func:`check_trained`) or, where it records none (a TorchScript file, a factory, an export),
    the accuracy measured on ``(x, y)``, refused the same way when near chance.

    Returns ``(accuracy, measured)``.
    """
    metrics = meta.get("metrics") or {}
    if isinstance(metrics, dict) and isinstance(metrics.get("test_accuracy", metrics.get("accuracy")), (int, float)):
        return check_trained(meta, num_classes, name), False
    accuracy = measured_accuracy(model, x, y)
    check_accuracy(accuracy, num_classes, f"{name} measured test")
    return accuracy, True


@torch.no_grad()
def measured_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """The accuracy of ``model`` on ``(x, y)`` (``x`` on the model's device), in eval mode: a
    ``torch.export`` module, whose mode is fixed, is run as it is (:func:`salmap.frozen.frozen`)."""
    with frozen(model):
        pred = predict(model, x, batch_size).argmax(dim=1).cpu()
    return float((pred == y.cpu()).float().mean())


def check_accuracy(accuracy: float, num_classes: int, name: str = "model") -> None:
    """``ValueError`` when ``accuracy`` is within 10 points of chance ``1 / num_classes``."""
    chance = 1.0 / num_classes
    if accuracy <= chance + 0.1:
        raise ValueError(
            f"{name} accuracy {accuracy:.3f} is near chance ({chance:.3f} for {num_classes} classes): "
            "it looks untrained; defend and evaluate a trained model"
        )


__all__ = ["AttackSpec", "check_accuracy", "check_trained", "default_attacks", "measured_accuracy",
           "model_accuracy"]
