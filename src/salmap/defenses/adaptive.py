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
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from salmap._validate import check_choice, check_number
from salmap.defenses.denoiser import Purified, check_denoiser_shape
from salmap.gradients import Model, frozen, loss_grad

log = logging.getLogger(__name__)

#: what :class:`EOT` averages over the random passes.
AVERAGES = ("loss", "logits", "probabilities")


class DefenseWarning(UserWarning):
    """An evaluation of a defense that is probably too weak (masked gradients, ignored randomness)."""


class EOT(nn.Module):
    """Expectation over transformation: an attack model that averages over a randomised model's choices.

    Athalye, Engstrom, Ilyas and Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018,
    and Athalye et al. 2018 (Section 4.3): the attacker follows the gradient of the
    *expected loss* over the defense's randomness, ``E_k[grad_x L(f_k(x), y)]``, estimated
    from a set of random passes ``f_k``. For a model with ``num_channels`` and
    ``channel_forward(x, k)`` (a :class:`~salmap.defenses.block_switch.BlockSwitch`) and
    ``samples=None`` the passes are the K channels (the exact expectation over a uniform
    channel choice); otherwise the model is run ``samples`` times (Monte-Carlo EOT, the
    model's own seeded generator drawing the choices).

    ``average`` says what is averaged over the passes:

    - ``"loss"`` (default, Athalye et al.'s definition): a loss-based attack
      (:func:`salmap.gradients.loss_grad`: FGSM, BIM, PGD) gets ``mean_k L(f_k(x), y)`` from
      :meth:`expected_loss`, so its gradient is exactly ``mean_k grad L(f_k(x), y)``; the
      module's output (what every other attack differentiates and what decides success) is
      the log of the mean softmax, the log-likelihood of the expected prediction.
    - ``"logits"``: the module outputs ``mean_k f_k(x)`` and every attack differentiates
      its loss of that mean: ``grad L(mean_k f_k(x), y)``, not the mean of the gradients.
    - ``"probabilities"``: the module outputs ``log mean_k softmax(f_k(x))``; the loss of
      that output is the negative log of the expected probability of ``y``.

    The three differ for a nonlinear loss; on block switching they point almost the same way
    (the issue's measurement: cosine 0.994 between the logit average's gradient and the
    expected loss gradient, robust accuracy within a point).

    Parameters
    ----------
    model: the randomised classifier.
    samples: Monte-Carlo passes, ``>= 1``; ``None`` for the exact expectation over channels
        (or 16 passes for a model without channels).
    average: ``"loss"``, ``"logits"`` or ``"probabilities"`` (see above).

    Examples
    --------
    >>> result = PGD(EOT(switched), eps=0.3)(x, y=y)     # adaptive PGD on block switching  # doctest: +SKIP
    """

    #: tells :func:`warn_if_unaccounted` that this attack model handles randomness.
    accounts_for_randomness = True

    def __init__(self, model: nn.Module, samples: int | None = None, average: str = "loss") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if samples is not None:
            check_number("samples", samples, low=1, integer=True)
        self.model = model
        self.exact = samples is None and hasattr(model, "channel_forward") and hasattr(model, "num_channels")
        self.samples = samples if samples is not None else 16
        self.average = check_choice("average", average, AVERAGES)

    def relevance_model(self) -> MeanOfPasses:
        """What LRP explains for this model (:func:`salmap.lrp.propagation.explained`): the mean of
        the passes' logits, whose relevance is the mean of the passes' relevance (EOT over the
        relevance; the log of a mean softmax mixes the classes, which no LRP rule redistributes)."""
        return MeanOfPasses(self)

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
        return self._aggregate(torch.stack(self.outputs(x)))

    def _aggregate(self, outs: Tensor) -> Tensor:
        if self.average == "logits":
            return outs.mean(dim=0)
        return torch.log(torch.softmax(outs, dim=-1).mean(dim=0).clamp_min(1e-12))

    def expected_loss(
        self, x: Tensor, labels: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``(output, per-sample loss)`` for a loss-based attack: with ``average="loss"`` the loss
        is ``mean_k loss_fn(f_k(x), labels)`` over the same passes as the output; otherwise
        ``loss_fn(self(x), labels)``."""
        outs = torch.stack(self.outputs(x))
        out = self._aggregate(outs)
        if self.average != "loss":
            return out, loss_fn(out, labels)
        return out, torch.stack([loss_fn(o, labels) for o in outs]).mean(dim=0)


class MeanOfPasses(nn.Module):
    """The mean of an :class:`EOT` model's passes' logits: what LRP explains for it, whose relevance is
    the mean of the passes' relevance; :meth:`model_output` is the EOT model's own output from the
    same passes (what decides a prediction)."""

    def __init__(self, eot: EOT) -> None:
        super().__init__()
        self.eot = eot
        self._outs: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        outs = torch.stack(self.eot.outputs(x))
        self._outs = outs.detach()
        return outs.mean(dim=0)

    def model_output(self) -> Tensor:
        """The EOT model's output from the last forward pass's passes."""
        if self._outs is None:
            raise RuntimeError("model_output() needs a forward pass first")
        return self.eot._aggregate(self._outs)


class _StraightThrough(torch.autograd.Function):
    """Forward: the given values; backward: the gradient of the approximation passes unchanged."""

    @staticmethod
    def forward(ctx: Any, approx: Tensor, exact: Tensor) -> Tensor:  # type: ignore[override]
        return exact.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
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
        if approximation is not None and not callable(approximation):
            raise ValueError(f"approximation must be a torch.nn.Module, a callable or None, got {type(approximation).__name__}")
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


class PurifiedChannels(nn.Module):
    """``model(denoiser(x))`` for a channel model (:class:`~salmap.defenses.block_switch.BlockSwitch`),
    exposing ``num_channels`` and ``channel_forward`` so that :class:`EOT` takes the exact
    expectation over the channels *through* the denoiser (DAE + block switching)."""

    def __init__(self, model: nn.Module, denoiser: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "channel_forward") and hasattr(model, "num_channels")):
            raise ValueError(f"model must have channel_forward and num_channels (a BlockSwitch), got {type(model).__name__}")
        self.model = model
        self.denoiser = denoiser

    @property
    def num_channels(self) -> int:
        return int(cast(Any, self.model).num_channels)

    def channel_forward(self, x: Tensor, k: int) -> Tensor:
        return cast(Any, self.model).channel_forward(self.denoiser(x), k)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.denoiser(x))


def adaptive_model(
    defended: nn.Module, x: Tensor, y: Tensor, samples: int | None = None, average: str = "loss"
) -> nn.Module:
    """The model an adaptive white-box attacker differentiates for ``defended``.

    - randomised models (block switching): :class:`EOT` over the random choices (``samples``
      and ``average`` as there);
    - :class:`~salmap.defenses.denoiser.Purified`: the purified model itself (gradients
      through the denoiser), or the denoiser under :class:`BPDA` when the gradient through it
      is zero; a randomised classifier behind the denoiser (DAE + block switching) is
      attacked with EOT over its channels through that (or the BPDA) denoiser;
    - anything else (adversarial training): the model itself.

    ``x, y`` is a probe batch for the gradient checks.
    """
    if isinstance(defended, Purified):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DefenseWarning)
            usable = check_gradients(defended, x, y)
        denoiser = defended.denoiser
        if not usable:
            log.info("denoiser gradients are zero: attacking through BPDA (identity backward)")
            denoiser = BPDA(defended.denoiser)
        inner = defended.model
        if is_randomized(inner):
            if samples is None and hasattr(inner, "channel_forward") and hasattr(inner, "num_channels"):
                return EOT(PurifiedChannels(inner, denoiser), None, average)
            return EOT(Purified(inner, denoiser), samples, average)
        return defended if usable else Purified(inner, denoiser)
    if is_randomized(defended):
        return EOT(defended, samples, average)
    check_gradients(defended, x, y)
    return defended
