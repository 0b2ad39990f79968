"""The explainer base class: ``attribute(x, target) -> Tensor``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor

from salmap._validate import check_input
from salmap.explain.targets import Target, resolve_target
from salmap.gradients import Model, frozen, predict


class Explainer(ABC):
    """Base class of every explanation method.

    An explainer holds configuration; :meth:`attribute` explains a batch. It validates
    ``x``, resolves the target (default: the predicted class) once for every method,
    freezes the model (eval mode, parameters not requiring grad, both restored), and
    calls the subclass's :meth:`_attribute`.

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
        x: input batch ``(B, C, H, W)`` (or any ``(B, ...)``).
        target: class per sample (int, sequence or tensor); default the predicted class.
            For segmenters, the class whose score is summed over ``mask``.
        mask: segmenters only: ``(B, H, W)`` or ``(H, W)`` bool mask of output pixels whose
            scores are summed; default every pixel predicted as ``target``.
        """
        x = check_input(x)
        with frozen(self.model):
            x0 = x.detach()
            out = predict(self.model, x0)
            tgt = resolve_target(out, target, mask)
            return self._attribute(x0, tgt).detach()

    @abstractmethod
    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        """The method itself, on a frozen model and a resolved target."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({args})"
