"""Adaptive white-box attacks on defenses: EOT and BPDA wrappers, and warnings for weak attacks.

Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security:
Circumventing Defenses to Adversarial Examples", ICML 2018. A defense is only evaluated
honestly when the attacker differentiates through it: through a denoiser directly, with
*expectation over transformation* (EOT) for a randomised model, and with *backward pass
differentiable approximation* (BPDA) for a step that has no useful gradient. Any
gradient attack of :mod:`salmap.attacks` applied to the wrapped model is then adaptive.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn

from salmap._validate import check_choice, check_number
from salmap.defenses.denoiser import Purified, check_denoiser_shape
from salmap.gradients import Model, frozen, loss_grad

log = logging.getLogger(__name__)


class DefenseWarning(UserWarning):
    """An evaluation of a defense that is probably too weak (masked gradients, ignored randomness)."""


class EOT(nn.Module):
    """Expectation over transformation: the mean of a randomised model's outputs, so that its
    gradient is the mean gradient over the model's random choices.

    Athalye et al. 2018 (Section 4.3). For a model with ``num_channels`` and
    ``channel_forward(x, k)`` (a :class:`~salmap.defenses.block_switch.BlockSwitch`) and
    ``samples=None``, the expectation over the uniform channel choice is computed exactly,
    one pass per channel; otherwise the model is run ``samples`` times and the outputs
    averaged (Monte-Carlo EOT; the model's own seeded generator draws the choices).

    Parameters
    ----------
    model: the randomised classifier.
    samples: Monte-Carlo passes, ``>= 1``; ``None`` for the exact expectation over channels
        (or 16 passes for a model without channels).
    average: ``"logits"`` (mean logits) or ``"probabilities"`` (log of the mean softmax, the
        log-likelihood of the expected prediction).

    Examples
    --------
    >>> result = PGD(EOT(switched), eps=0.3)(x, y=y)     # adaptive PGD on block switching  # doctest: +SKIP
    """

    #: tells :func:`warn_if_unaccounted` that this attack model handles randomness.
    accounts_for_randomness = True

    def __init__(self, model: nn.Module, samples: int | None = None, average: str = "logits") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if samples is not None:
            check_number("samples", samples, low=1, integer=True)
        self.model = model
        self.exact = samples is None and hasattr(model, "channel_forward") and hasattr(model, "num_channels")
        self.samples = samples if samples is not None else 16
        self.average = check_choice("average", average, ("logits", "probabilities"))

    def outputs(self, x: Tensor) -> list[Tensor]:
        """The individual outputs being averaged (one per channel, or one per pass)."""
        if self.exact:
            switched = cast(Any, self.model)
            return [switched.channel_forward(x, k) for k in range(int(switched.num_channels))]
        with warnings.catch_warnings():
            # Single random passes are exactly what EOT averages; the warning does not apply here.
            warnings.simplefilter("ignore", DefenseWarning)
            return [self.model(x) for _ in range(self.samples)]

    def forward(self, x: Tensor) -> Tensor:
        outs = torch.stack(self.outputs(x))
        if self.average == "logits":
            return outs.mean(dim=0)
        return torch.log(torch.softmax(outs, dim=-1).mean(dim=0).clamp_min(1e-12))


class _StraightThrough(torch.autograd.Function):
    """Forward: the given values; backward: the gradient of the approximation passes unchanged."""

    @staticmethod
    def forward(ctx, approx: Tensor, exact: Tensor) -> Tensor:  # type: ignore[override]
        return exact.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class BPDA(nn.Module):
    """Backward pass differentiable approximation of a (non-differentiable) input transformation.

    Athalye et al. 2018 (Section 4.1): the forward pass applies ``module`` exactly; the
    backward pass differentiates ``approximation`` instead, by default the identity
    (``module(x) ~ x``, the straight-through estimator), which suits purifiers and
    quantisers whose output stays close to their input.

    Parameters
    ----------
    module: the transformation, mapping a batch to a batch of the same shape.
    approximation: a differentiable stand-in with the same output shape; identity when None.

    Examples
    --------
    >>> attackable = Purified(classifier, BPDA(quantizing_denoiser))     # doctest: +SKIP
    """

    def __init__(self, module: Model, approximation: Model | None = None) -> None:
        super().__init__()
        if not callable(module):
            raise ValueError(f"module must be a torch.nn.Module or callable, got {type(module).__name__}")
        self.module = module
        self.approximation = approximation

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            exact = check_denoiser_shape(self.module, x)
        approx = x if self.approximation is None else self.approximation(x)
        if approx.shape != exact.shape:
            raise ValueError(
                f"approximation must return the shape of the module's output {tuple(exact.shape)}, "
                f"got {tuple(approx.shape)}"
            )
        return _StraightThrough.apply(approx, exact)


def is_randomized(model: Model, x: Tensor | None = None) -> bool:
    """Whether ``model`` is randomised: a submodule declares ``randomized = True``, or (when a
    probe batch ``x`` is given) two forward passes on ``x`` disagree."""
    if isinstance(model, nn.Module) and any(getattr(m, "randomized", False) for m in model.modules()):
        return True
    if x is None:
        return False
    with frozen(model), torch.no_grad():
        return not torch.equal(model(x), model(x))


def warn_if_unaccounted(attack_model: Model, defended: Model, x: Tensor | None = None) -> bool:
    """Warn (:class:`DefenseWarning`) when ``defended`` is randomised and ``attack_model`` does not
    average over its randomness (is not an :class:`EOT`); returns whether it warned."""
    if getattr(attack_model, "accounts_for_randomness", False) or not is_randomized(defended, x):
        return False
    warnings.warn(
        f"{type(defended).__name__} is randomised but the attack differentiates single random passes: "
        "wrap it in salmap.defenses.adaptive.EOT for an adaptive evaluation (Athalye et al. 2018)",
        DefenseWarning,
        stacklevel=2,
    )
    return True


def check_gradients(model: Model, x: Tensor, y: Tensor) -> bool:
    """Whether the loss gradient of ``model`` at ``(x, y)`` is non-zero; warns (:class:`DefenseWarning`)
    when it is zero everywhere (masked or shattered gradients: use :class:`BPDA`)."""
    with frozen(model):
        _, grad = loss_grad(model, x, y)
    if bool((grad != 0).any()) and bool(torch.isfinite(grad).all()):
        return True
    warnings.warn(
        f"the loss gradient of {type(model).__name__} is zero (or not finite) for all {x.shape[0]} inputs: "
        "gradient attacks will fail for that reason alone; use BPDA for non-differentiable steps",
        DefenseWarning,
        stacklevel=2,
    )
    return False


def adaptive_model(defended: nn.Module, x: Tensor, y: Tensor, samples: int | None = None) -> nn.Module:
    """The model an adaptive white-box attacker differentiates for ``defended``.

    - randomised models (block switching): :class:`EOT` over the random choices;
    - :class:`~salmap.defenses.denoiser.Purified`: the purified model itself (gradients
      through the denoiser), or the denoiser under :class:`BPDA` when its gradient is zero;
    - anything else (adversarial training): the model itself.

    ``x, y`` is a probe batch for the gradient checks.
    """
    if is_randomized(defended):
        return EOT(defended, samples)
    if isinstance(defended, Purified):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DefenseWarning)
            usable = check_gradients(defended, x, y)
        if not usable:
            log.info("denoiser gradients are zero: attacking through BPDA (identity backward)")
            return Purified(defended.model, BPDA(defended.denoiser))
    check_gradients(defended, x, y)
    return defended
