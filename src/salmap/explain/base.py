"""The explainer base class: ``attribute(x, target) -> Tensor``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from salmap._validate import check_input
from salmap.explain.targets import Target, resolve_target
from salmap.gradients import Model, frozen, predict, predict_checked

#: Turns the model's outputs on the batch into the resolved :class:`Target`.
Resolver = Callable[[Tensor], Target]


class Explainer(ABC):
    """Base class of every explanation method.

    An explainer holds configuration; :meth:`attribute` explains a batch. It validates
    ``x``, freezes the model (eval mode, parameters not requiring grad, both restored)
    and hands the subclass the batch and the target. The target (default: the predicted
    class) is resolved from the model's outputs on ``x``.

    Subclasses implement :meth:`_attribute` (given a resolved :class:`Target`). A method
    that runs its own forward pass on the clean batch anyway (gradient saliency,
    Grad-CAM, occlusion) overrides :meth:`_explain` instead, so that the target is
    resolved from that pass and no extra forward pass is spent on it.

    Parameters
    ----------
    model: classifier ``(B, K)`` or segmenter ``(B, K, H, W)`` / ``(B, 1, H, W)``.
    """

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

        def resolve(out: Tensor) -> Target:
            return resolve_target(out, target, mask)

        # (inference_mode(False): the gradients a method needs, under a caller's torch.inference_mode())
        with frozen(self.model), torch.inference_mode(False):
            # A private copy: the model never sees the caller's storage (a model that writes
            # into its input must not change the caller's tensor).
            own = x.detach().clone()
            try:
                return self._explain(own, resolve).detach()
            except (RuntimeError, ValueError, TypeError, IndexError):
                predict_checked(self.model, own)  # names x's shape when the model cannot take it (else: the error as it was)
                raise

    def _explain(self, x: Tensor, resolve: Resolver) -> Tensor:
        """Resolve the target with one forward pass, then run :meth:`_attribute`."""
        return self._attribute(x, resolve(predict(self.model, x)))

    @abstractmethod
    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        """The method itself, on a frozen model and a resolved target."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({args})"
