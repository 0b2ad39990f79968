"""The attack base class and its result type (target helpers live in :mod:`salmap.targets`).

An :class:`Attack` holds configuration only. Calling it on a batch validates the
input, runs the subclass's :meth:`Attack._run` with the model frozen (eval mode,
parameters not requiring grad, both restored afterwards), clips to the bounds,
and measures success and distortion once, for every attack alike.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from salmap._validate import BoundsLike, check_bounds, check_input, check_labels
from salmap.gradients import Model, frozen, predict
from salmap.metrics import distortion
from salmap.targets import all_other_targets, random_targets


@dataclass
class AttackResult:
    """What an attack returns: one entry per sample for every tensor field.

    Attributes
    ----------
    x_adv: the adversarial inputs, same shape and device as the input.
    success: bool ``(B,)``: the goal was reached (target predicted, or label changed).
    l0: number of input features changed, float ``(B,)``.
    l2, linf: L2 and Linf norms of the perturbation ``(B,)``.
    iterations: long ``(B,)``: iterations the sample took before it stopped.
    pred_before, pred_after: the model's predictions on the clean and adversarial inputs.
    labels: the labels the attack was called with (true labels or targets).
    targeted: whether ``labels`` are targets.
    seconds: wall time of the whole call.
    extra: attack-specific per-sample tensors (e.g. segmentation pixel accuracy).
    """

    x_adv: Tensor
    success: Tensor
    l0: Tensor
    l2: Tensor
    linf: Tensor
    iterations: Tensor
    pred_before: Tensor
    pred_after: Tensor
    labels: Tensor
    targeted: bool
    seconds: float = 0.0
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def num_features(self) -> int:
        """Number of input features per sample."""
        return int(self.x_adv[0].numel())

    @property
    def l0_fraction(self) -> Tensor:
        """L0 as a fraction of the number of input features."""
        return self.l0 / max(self.num_features, 1)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")

    def to(self, device: torch.device | str) -> AttackResult:
        """The same result with every tensor moved to ``device``."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device)
            elif f.name == "extra":
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return AttackResult(**moved)

    def summary(self) -> dict[str, float]:
        """Mean figures over the batch (distortions averaged over all samples)."""
        return {
            "samples": float(len(self)),
            "success_rate": self.success_rate,
            "l0": float(self.l0.mean()),
            "l0_fraction": float(self.l0_fraction.mean()),
            "l2": float(self.l2.mean()),
            "linf": float(self.linf.mean()),
            "iterations": float(self.iterations.float().mean()),
            "seconds": self.seconds,
        }

    @staticmethod
    def concat(results: list[AttackResult]) -> AttackResult:
        """Join the results of several batches into one."""
        if not results:
            raise ValueError("results must hold at least one AttackResult, got an empty list")
        joined: dict[str, Any] = {}
        for f in fields(AttackResult):
            values = [getattr(r, f.name) for r in results]
            if f.name == "extra":
                joined[f.name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
            elif f.name == "seconds":
                joined[f.name] = float(sum(values))
            elif f.name == "targeted":
                joined[f.name] = values[0]
            else:
                joined[f.name] = torch.cat(values)
        return AttackResult(**joined)


class Attack(ABC):
    """Base class of every attack: configuration at construction, a batch per call.

    Subclasses implement :meth:`_run`; they may override :meth:`_check_labels` and
    :meth:`_is_success` for other kinds of goal (segmentation masks).

    Parameters
    ----------
    model: any ``torch.nn.Module`` or callable mapping a batch to logits ``(B, K)``.
    bounds: ``(low, high)``: the valid range of every input feature: numbers, one value per
        channel (``((0, 0, 0), (1, 1, 1))``) or tensors broadcastable to the input
        (see :func:`salmap._validate.check_bounds`).
    """

    #: whether the attack accepts ``target=`` (targeted) and ``y=`` (untargeted) calls.
    supports_targeted: bool = True
    supports_untargeted: bool = True

    def __init__(self, model: Model, bounds: BoundsLike = (0.0, 1.0)) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or callable, got {type(model).__name__}")
        self.model = model
        self.bounds = check_bounds(bounds)

    def __call__(
        self, x: Tensor, y: Any = None, target: Any = None, *, clean: Tensor | None = None
    ) -> AttackResult:
        """Attack a batch: untargeted with the true labels ``y``, or targeted with ``target``.

        Exactly one of ``y`` and ``target`` must be given. ``x`` is not modified. ``clean``:
        the model's outputs on ``x`` when the caller has them already (not computed again).
        """
        if (y is None) == (target is None):
            raise ValueError(
                "exactly one of y (untargeted: true labels) and target (targeted) must be given, "
                f"got y={'None' if y is None else 'given'} and target={'None' if target is None else 'given'}"
            )
        targeted = target is not None
        if targeted and not self.supports_targeted:
            raise ValueError(f"{type(self).__name__} is untargeted only: pass y, not target")
        if not targeted and not self.supports_untargeted:
            raise ValueError(f"{type(self).__name__} is targeted only: pass target, not y")
        x = check_input(x, self.bounds)
        start = time.perf_counter()
        with frozen(self.model):
            x0 = x.detach().clone()
            if clean is None:
                clean = first_forward(self.model, x0)
            elif clean.shape[0] != x0.shape[0]:
                raise ValueError(f"clean must hold one output per sample ({x0.shape[0]}), got shape {tuple(clean.shape)}")
            else:
                clean = clean.detach().to(x0.device)
                check_finite_outputs(clean, "clean")
            labels = self._check_labels(x0, target if targeted else y, targeted, clean)
            x_adv, iterations = self._run(x0, labels, targeted, clean)
            x_adv = self.bounds.clamp(x_adv.detach())
            after = predict(self.model, x_adv)
            check_finite_outputs(after, "adversarial")
            success = self._is_success(after, labels, targeted)
        l0, l2, linf = distortion(x0, x_adv)
        return AttackResult(
            x_adv=x_adv,
            success=success,
            l0=l0,
            l2=l2,
            linf=linf,
            iterations=iterations.to(device=x.device, dtype=torch.long),
            pred_before=self._predictions(clean),
            pred_after=self._predictions(after),
            labels=labels,
            targeted=targeted,
            seconds=time.perf_counter() - start,
            extra=self._extra(x0, x_adv, labels, clean, after),
        )

    # -- hooks for subclasses -------------------------------------------------
    @abstractmethod
    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        """Craft adversarial inputs. Returns ``(x_adv, iterations per sample)``.

        ``x`` is a private copy; ``clean`` are the model's outputs on it.
        """

    def _check_labels(self, x: Tensor, labels: Any, targeted: bool, clean: Tensor) -> Tensor:
        """Validate and return the labels (class indices ``(B,)`` for classifiers)."""
        if clean.dim() != 2:
            raise ValueError(
                f"model must return (B, classes) logits for {type(self).__name__}, "
                f"got output of shape {tuple(clean.shape)}"
            )
        return check_labels(labels, x.shape[0], clean.shape[1], "target" if targeted else "y", x.device)

    def _predictions(self, out: Tensor) -> Tensor:
        """The predicted labels stored in the result (arg-max class; masks for segmenters)."""
        return out.argmax(dim=1)

    def _is_success(self, out: Tensor, labels: Tensor, targeted: bool) -> Tensor:
        pred = out.argmax(dim=1)
        return pred == labels if targeted else pred != labels

    def _extra(self, x: Tensor, x_adv: Tensor, labels: Tensor, clean: Tensor, after: Tensor) -> dict[str, Tensor]:
        return {}

    def __repr__(self) -> str:
        skip = {"model"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def first_forward(model: Model, x: Tensor) -> Tensor:
    """The model's outputs on the clean batch, or a ``ValueError`` that says what went wrong:
    a model that cannot take ``x`` (3-D input, wrong image size) is named with ``x``'s shape,
    and non-finite outputs are refused (an attack's success cannot be judged on NaN logits)."""
    try:
        out = predict(model, x)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        text = " ".join(str(err).split())
        raise ValueError(
            f"the model cannot be run on x of shape {tuple(x.shape)}: {text[-300:]} "
            "(x must be a batch (B, ...) of the inputs the model expects, e.g. (B, C, H, W) images)"
        ) from err
    check_finite_outputs(out, "clean")
    return out


def check_finite_outputs(out: Tensor, which: str) -> None:
    """Refuse NaN/inf model outputs (one check on the whole batch, one host sync)."""
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).flatten(1).any(dim=1).sum()) if out.dim() > 1 else -1
        raise ValueError(
            f"the model returned NaN or infinite outputs on {bad} of {out.shape[0]} {which} inputs; "
            "success cannot be judged on them (check the model and its input range)"
        )


__all__ = ["Attack", "AttackResult", "all_other_targets", "random_targets"]
