"""The LRP explainer: layer-wise relevance propagation for classifiers and segmenters.

The rules, composites and propagation live in :mod:`salmap.lrp` (the ISI attack uses them
too); their names are re-exported here.
"""

from __future__ import annotations

from torch import Tensor, nn

from salmap._validate import BoundsLike, check_bounds
from salmap.explain.base import Explainer
from salmap.explain.targets import Target
from salmap.gradients import Model
from salmap.lrp import (
    COMPOSITES,
    AlphaBeta,
    Composite,
    Epsilon,
    LRPPlan,
    Rule,
    RuleContext,
    ZBox,
    ZPlus,
    check_supported,
    lrp_input_bounds,
    lrp_plan,
    lrp_relevance,
    make_composite,
)
from salmap.registry import register_explainer

__all__ = [
    "COMPOSITES", "LRP", "AlphaBeta", "Composite", "Epsilon", "LRPPlan", "Rule", "RuleContext", "ZBox", "ZPlus",
    "check_supported", "lrp_input_bounds", "lrp_plan", "lrp_relevance", "make_composite",
]


@register_explainer("lrp", needs_module=True, ranges={"eps": "(0, inf)"}, model_check=check_supported,
                    input_check=lrp_plan)
class LRP(Explainer):
    """Layer-wise relevance propagation for classifiers and segmenters.

    Bach et al., PLoS ONE 2015; rules and composites after Montavon et al. 2019. The
    output layer's relevance is the target's score (the class logit, or for segmenters
    the class's scores over the pixel mask); it is redistributed layer by layer with the
    composite's rules and returned per input feature, shaped like ``x``. Supports Conv,
    ConvTranspose, Linear, max/average/adaptive pooling, ReLU, flatten, batch norm (merged
    into the layer before it), residual additions and concatenation (handled by autograd).
    One forward and one backward pass per batch; hooks live only during the call.

    Parameters
    ----------
    model: a ``torch.nn.Module`` built of the supported layers.
    composite: ``"epsilon"``, ``"epsilon-plus"`` (default) or ``"epsilon-alpha2-beta1"``
        (see :func:`make_composite`), or a :class:`Composite`.
    bounds: the input bounds used by the z^B rule of the named composites.
    eps: epsilon of the epsilon rule in the named composites.

    Examples
    --------
    >>> relevance = LRP(model, composite="epsilon").attribute(x, target=y)   # doctest: +SKIP
    >>> relevance.flatten(1).sum(1)   # ~ the explained logits (epsilon rule, no biases)  # doctest: +SKIP
    """

    def __init__(
        self, model: Model, composite: str | Composite = "epsilon-plus", bounds: BoundsLike = (0.0, 1.0),
        eps: float = 1e-6,
    ) -> None:
        super().__init__(model)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module for LRP, got {type(model).__name__}")
        self.composite = (
            make_composite(composite, lrp_input_bounds(model, bounds), eps) if isinstance(composite, str) else composite
        )
        if not isinstance(self.composite, Composite):
            raise ValueError(f"composite must be one of {list(COMPOSITES)} or a Composite, got {composite!r}")
        self.bounds = check_bounds(bounds)
        check_supported(model)

    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        assert isinstance(self.model, nn.Module)
        _, relevance, _ = lrp_relevance(self.model, x, target.weights, self.composite)
        return relevance
