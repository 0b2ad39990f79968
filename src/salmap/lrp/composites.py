"""LRP composites: which rule each linear layer gets (Montavon et al. 2019, Kohlbrenner et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from salmap._validate import Bounds, BoundsLike, check_bounds, check_choice
from salmap.lrp.layers import CONV_LAYERS, LINEAR_LAYERS
from salmap.lrp.rules import AlphaBeta, Epsilon, Rule, ZBox, ZPlus


@dataclass
class Composite:
    """Which rule each linear layer gets: by layer type, and optionally another rule for the input layer.

    Parameters
    ----------
    rules: ``(layer types, rule)`` pairs; the first pair whose types match a layer wins.
    first: rule for layers that take the model input itself (e.g. :class:`ZBox`); ``None``
        uses ``rules`` there too.
    """

    rules: Sequence[tuple[type[nn.Module] | tuple[type[nn.Module], ...], Rule]]
    first: Rule | None = None

    def rule_for(self, module: nn.Module, is_input: bool) -> Rule | None:
        if is_input and self.first is not None:
            return self.first
        for types, rule in self.rules:
            if isinstance(module, types):
                return rule
        return None


#: names accepted by :func:`make_composite` (and ``LRP(composite=...)``).
COMPOSITES = ("epsilon", "epsilon-plus", "epsilon-alpha2-beta1")


def lrp_input_bounds(model: Any, bounds: BoundsLike) -> Bounds:
    """The bounds of the input LRP's first layer sees: ``bounds`` themselves, or for a
    :class:`~salmap.models.Normalized` model the normalised bounds ``(bound - mean) / std``
    (LRP explains the wrapped network on the normalised input, see :func:`~salmap.lrp.lrp_relevance`)."""
    from salmap.models.normalized import Normalized

    if isinstance(model, Normalized):
        return model.normalized_bounds(bounds, torch.zeros((1, model.mean.shape[0], 1, 1)))
    return check_bounds(bounds)


def make_composite(name: str, bounds: BoundsLike = (0.0, 1.0), eps: float = 1e-6) -> Composite:
    """A named composite (Montavon et al. 2019, Kohlbrenner et al. 2020).

    - ``"epsilon"``: LRP-epsilon on every linear layer.
    - ``"epsilon-plus"``: z^B on the input layer, z+ on other convolutions, epsilon on dense layers.
    - ``"epsilon-alpha2-beta1"``: z^B on the input layer, alpha=2/beta=1 on other
      convolutions, epsilon on dense layers.

    ``bounds`` are the input's bounds (for z^B; per feature or per channel allowed); ``eps``
    the epsilon of the epsilon rule.
    """
    check_choice("composite", name, COMPOSITES)
    low, high = check_bounds(bounds)
    dense = (nn.Linear, Epsilon(eps))
    if name == "epsilon":
        return Composite([(LINEAR_LAYERS, Epsilon(eps))])
    conv_rule: Rule = ZPlus() if name == "epsilon-plus" else AlphaBeta(2.0, 1.0)
    return Composite([dense, (CONV_LAYERS, conv_rule)], first=ZBox(low, high))
