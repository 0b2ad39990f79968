"""LRP rules for linear layers: epsilon, alpha-beta, z+ and z^B (box).

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015; Montavon et al., "Layer-Wise
Relevance Propagation: An Overview", 2019.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from salmap._validate import check_bounds, check_number
from salmap.lrp.layers import LayerFn


@dataclass
class RuleContext:
    """What a rule sees of one layer call: whether it takes the model input, and a place for extra leaves."""

    name: str
    is_input: bool
    leaves: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class Rule(ABC):
    """Base class of LRP rules for linear layers.

    A rule returns terms ``(z_k, coef_k, eps_k)``: modified forward passes of the
    layer on its input. The relevance ``R_j`` of output ``j`` is redistributed as
    ``R_i = sum_k coef_k * sum_j (d z_kj / d a_i) a_i * R_j / stabilise(z_kj, eps_k)``.
    """

    @abstractmethod
    def terms(
        self, fn: LayerFn, a: Tensor, weight: Tensor, bias: Tensor | None, ctx: RuleContext
    ) -> list[tuple[Tensor, float, float]]:
        """The rule's terms for one layer call (see the class docstring)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Epsilon(Rule):
    """LRP-epsilon: ``R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j`` (bias included in ``z_j``).

    ``eps -> 0`` is LRP-0 (gradient times input). Bach et al. 2015, eq. 58.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = float(check_number("eps", eps, low=0.0))

    def terms(
        self, fn: LayerFn, a: Tensor, weight: Tensor, bias: Tensor | None, ctx: RuleContext
    ) -> list[tuple[Tensor, float, float]]:
        return [(fn(a, weight, bias), 1.0, self.eps)]


class AlphaBeta(Rule):
    """LRP-alpha-beta: positive and negative contributions weighted by ``alpha`` and ``-beta``.

    ``R_i = sum_j (alpha (a_i w_ij)^+ / z_j^+ - beta (a_i w_ij)^- / z_j^-) R_j`` with
    ``alpha - beta = 1`` (Bach et al. 2015, eq. 60). Biases are left out of ``z^+`` and
    ``z^-`` (Montavon et al. 2017), so relevance is conserved.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, eps: float = 1e-6) -> None:
        self.alpha = float(check_number("alpha", alpha, low=1.0))
        self.beta = float(check_number("beta", beta, low=0.0))
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1, got alpha={alpha} and beta={beta}")
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))

    def terms(
        self, fn: LayerFn, a: Tensor, weight: Tensor, bias: Tensor | None, ctx: RuleContext
    ) -> list[tuple[Tensor, float, float]]:
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        # (a_i w_ij)^+ comes from a+ w+ and a- w-; (a_i w_ij)^- from a+ w- and a- w+. After a ReLU
        # there is no a-, and its passes (half of the work) are left out.
        if bool((a < 0).any()):
            a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
            positive = fn(a_pos, w_pos, None) + fn(a_neg, w_neg, None)
            negative = fn(a_pos, w_neg, None) + fn(a_neg, w_pos, None) if self.beta > 0 else None
        else:
            positive = fn(a, w_pos, None)
            negative = fn(a, w_neg, None) if self.beta > 0 else None
        out = [(positive, self.alpha, self.eps)]
        if negative is not None:
            out.append((negative, -self.beta, self.eps))
        return out


class ZPlus(AlphaBeta):
    """LRP-z+: ``R_i = sum_j (a_i w_ij)^+ / sum_i (a_i w_ij)^+ R_j`` (alpha=1, beta=0; no bias).

    For non-negative inputs (after a ReLU) this is ``a_i w_ij^+ / sum_i a_i w_ij^+``
    (Montavon et al. 2017, deep Taylor decomposition).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__(alpha=1.0, beta=0.0, eps=eps)


class ZBox(Rule):
    """LRP-z^B for the input layer of inputs bounded by ``low <= x <= high``.

    ``R_i = sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) / sum_i (...) R_j``
    (Montavon et al. 2017, deep Taylor decomposition with a box domain). Applies only to
    layers that take the model input itself. The relevance is ``x * g_x + l * g_l + h * g_h``:
    the bounds are extra leaves of the graph.
    """

    def __init__(self, low: float | Tensor = 0.0, high: float | Tensor = 1.0, eps: float = 1e-6) -> None:
        self.bounds = check_bounds((low, high), "bounds")
        self.low, self.high = self.bounds
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))

    def terms(
        self, fn: LayerFn, a: Tensor, weight: Tensor, bias: Tensor | None, ctx: RuleContext
    ) -> list[tuple[Tensor, float, float]]:
        if not ctx.is_input:
            raise ValueError(
                f"the ZBox rule applies only to layers that take the model input; layer {ctx.name!r} does not"
            )
        lo, hi = self.bounds.like(a)
        low = (torch.zeros_like(a) + lo).requires_grad_(True)
        high = (torch.zeros_like(a) + hi).requires_grad_(True)
        ctx.leaves.extend([(low, a), (high, a)])
        z = fn(a, weight, None) - fn(low, weight.clamp(min=0), None) - fn(high, weight.clamp(max=0), None)
        return [(z, 1.0, self.eps)]
