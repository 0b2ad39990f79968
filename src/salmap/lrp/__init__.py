"""Layer-wise relevance propagation (LRP): rules, composites and propagation.

Shared by the LRP explainer (:class:`salmap.explain.LRP`) and the ISI attack
(:class:`salmap.attacks.ISI`): :mod:`~salmap.lrp.rules` (epsilon, z+, z^B (box),
alpha-beta), :mod:`~salmap.lrp.composites` (which rule each layer gets),
:mod:`~salmap.lrp.layers` (supported layers, batch-norm merging),
:mod:`~salmap.lrp.functions` (smooth functions: the pass rule, or refused) and
:mod:`~salmap.lrp.propagation` (:func:`lrp_relevance`).

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015; Montavon et al., "Layer-Wise
Relevance Propagation: An Overview", 2019 (rules and composites).

Implementation: the *modified-gradient* formulation (as in zennit). Forward hooks on
the linear layers (``Conv``, ``ConvTranspose``, ``Linear``) return a tensor equal to
the layer's output whose gradient with respect to the layer's input is the rule's
redistribution ``J_rho^T (g * z / stabilise(z_rho))``. Everything between those
layers (ReLU, max pooling, average pooling, flatten, residual additions,
concatenation) keeps its ordinary gradient, which is exactly LRP-0 there; element-wise
smooth activations (sigmoid, tanh, GELU, ...) pass relevance on unchanged, as zennit's
composites do, and functions that mix features (softmax, layer norm, products of two
activations) are refused (:mod:`~salmap.lrp.functions`). With
``g`` the gradient arriving at a neuron of value ``a``, the neuron's relevance is
``a * g``, so one forward pass and one backward pass give the input relevance
``x * grad`` for the whole batch at once. Batch norm is merged into the layer that
feeds it (canonisation) inside the hooks, so the caller's model is never modified.
"""

from salmap.lrp.composites import COMPOSITES, Composite, lrp_input_bounds, make_composite
from salmap.lrp.layers import (
    ACTIVATION_LAYERS,
    CONV_LAYERS,
    LINEAR_LAYERS,
    NORM_LAYERS,
    PASS_LAYERS,
    LayerFn,
    check_supported,
)
from salmap.lrp.propagation import LRPPlan, lrp_plan, lrp_relevance
from salmap.lrp.rules import AlphaBeta, Epsilon, Rule, RuleContext, ZBox, ZPlus

__all__ = [
    "ACTIVATION_LAYERS", "COMPOSITES", "CONV_LAYERS", "LINEAR_LAYERS", "NORM_LAYERS", "PASS_LAYERS", "AlphaBeta", "Composite", "Epsilon",
    "LRPPlan", "LayerFn", "Rule", "RuleContext", "ZBox", "ZPlus", "check_supported", "lrp_input_bounds", "lrp_plan", "lrp_relevance",
    "make_composite",
]
