"""The explainer base class: ``attribute(x, target) -> Tensor``."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from salmap._validate import check_input
from salmap.explain.targets import Target, resolve_target
from salmap.gradients import Model, check_output_rows, frozen, predict, predict_checked

#: Turns the model's outputs on the batch into the resolved :class:`Target`.
Resolver = Callable[[Tensor], Target]


class Explainer(ABC):
    """Base class of every explanation method.

    An explainer holds configuration; :meth:`attribute` explains a batch. It validates
    ``x``, freezes the model (eval mode, parameters not requiring grad, both restored)
    and hands the subclass the batch and the target. The target (default: the predicted
    class) is resolved from the model's outputs on ``x``.

    Non-finite model outputs are refused (``ValueError``): a map of NaN logits is NaN and
    says nothing. The outputs and the map are looked at together, once the work is queued, in
    one read of the device per call (a per-sample minimum and maximum of each: NaN propagates
    into both and an infinity is one of them; nothing is copied). A map that is NaN or infinite
    where the outputs are finite (a gradient that is not defined there, e.g. of ``sqrt`` at 0
    inside the model) is returned as it is, as captum returns it, with a ``RuntimeWarning``
    naming how many samples it spoils. A method whose map is made of output differences only
    (occlusion: ``outputs_only``) refuses it instead: it means outputs of its occluded
    inputs were not finite.

    Subclasses implement :meth:`_attribute` (given a resolved :class:`Target`). A method
    that runs its own forward pass on the clean batch anyway (gradient saliency,
    Grad-CAM, occlusion) overrides :meth:`_explain` instead, so that the target is
    resolved from that pass and no extra forward pass is spent on it.

    Parameters
    ----------
    model: classifier ``(B, K)`` or segmenter ``(B, K, H, W)`` / ``(B, 1, H, W)``.
    """

    #: set by a method whose map is made of model outputs only (no gradient): the other inputs it runs
    #: the model on (a non-finite map then means non-finite outputs on them, refused)
    outputs_only: ClassVar[str | None] = None

    def __init__(self, model: Model) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or callable, got {type(model).__name__}")
        self.model = model

    def attribute(self, x: Tensor, target: Any = None, mask: Tensor | None = None) -> Tensor:
        """Explain ``x``: one attribution map per sample, on ``x``'s device.

        Parameters
        ----------
        x: input batch ``(B, C, H, W)`` (or any ``(B, ...)``). Not modified.
        target: class per sample (int, sequence or tensor); default the predicted class.
            For segmenters, the class whose score is summed over ``mask``.
        mask: segmenters only: ``(B, H, W)`` or ``(H, W)`` bool mask of output pixels whose
            scores are summed; default every pixel predicted as ``target``.

        Returns
        -------
        Tensor: the attribution maps (shape depends on the method), detached.
        """
        x = check_input(x)
        # per forward pass whose outputs the target is resolved from: its non-finite samples, queued
        spoiled: list[Tensor] = []

        def resolve(out: Tensor) -> Target:
            check_output_rows(out, x.shape[0])  # (a target resolved from the wrong rows: maps of zeros)
            spoiled.append(nonfinite_samples(out))
            return resolve_target(out, target, mask)

        # (inference_mode(False): the gradients a method needs, under a caller's torch.inference_mode())
        with frozen(self.model), torch.inference_mode(False):
            # A private copy: the model never sees the caller's storage (a model that writes
            # into its input must not change the caller's tensor).
            own = x.detach().clone()
            try:
                heat = self._explain(own, resolve).detach()
            except (RuntimeError, ValueError, TypeError, IndexError):
                predict_checked(self.model, own)  # names x's shape when the model cannot take it (else: the error as it was)
                raise
        self._judge(spoiled, heat)
        return heat

    def _judge(self, spoiled: list[Tensor], heat: Tensor) -> None:
        """Refuse non-finite outputs and warn of a non-finite map, in one read of the device."""
        *outs, bad_map = torch.cat([s.to(heat.device) for s in spoiled] + [nonfinite_samples(heat)]).tolist()
        batch = heat.shape[0]
        # a model finite in float32 may not be in float16
        fp16 = "; float16 overflows above 65504: try precision='bf16'" if getattr(self, "precision", "") == "fp16" else ""
        if max(outs, default=0):
            raise ValueError(
                f"the model's outputs are NaN or infinite on {int(max(outs))} of {batch} samples of x, so their "
                f"{type(self).__name__} map would be NaN (expected finite outputs: check the model and x's range{fp16})"
            )
        if bad_map and self.outputs_only:
            raise ValueError(
                f"the model's outputs on {self.outputs_only} are NaN or infinite for {int(bad_map)} of {batch} "
                f"samples, so their {type(self).__name__} map would be NaN (expected finite outputs: check the model{fp16})"
            )
        if bad_map:
            warnings.warn(
                f"the {type(self).__name__} map is NaN or infinite on {int(bad_map)} of {batch} samples of x although "
                "the model's outputs are finite: a gradient inside the model is not defined there (e.g. of sqrt or log "
                "at 0); those maps are returned as they are",
                RuntimeWarning, stacklevel=3,
            )

    def _explain(self, x: Tensor, resolve: Resolver) -> Tensor:
        """Resolve the target with one forward pass, then run :meth:`_attribute`."""
        return self._attribute(x, resolve(predict(self.model, x)))

    @abstractmethod
    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        """The method itself, on a frozen model and a resolved target."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def nonfinite_samples(t: Tensor) -> Tensor:
    """How many samples of ``t`` ``(B, ...)`` hold a NaN or an infinity, as a 1-element long tensor
    queued on ``t``'s device (no read): each sample's minimum and maximum (a NaN propagates into
    both, an infinity is one of them), two reductions and no copy of ``t``."""
    t = t.detach()
    if t.numel() == 0:
        return torch.zeros(1, dtype=torch.long, device=t.device)
    if t.dim() < 2:
        return (~torch.isfinite(t)).sum().reshape(1)
    dims = tuple(range(1, t.dim()))
    finite = torch.isfinite(torch.amin(t, dim=dims)) & torch.isfinite(torch.amax(t, dim=dims))
    return (~finite).sum().reshape(1)
