"""Layer-wise relevance propagation (LRP): epsilon, z+, z^B (box) and alpha-beta rules.

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation", PLoS ONE 2015; Montavon et al., "Layer-Wise
Relevance Propagation: An Overview", 2019 (rules and composites).

Implementation: the *modified-gradient* formulation (as in zennit). Forward hooks on
the linear layers (``Conv``, ``ConvTranspose``, ``Linear``) return a tensor equal to
the layer's output whose gradient with respect to the layer's input is the rule's
redistribution ``J_rho^T (g * z / stabilise(z_rho))``. Everything between those
layers (ReLU, max pooling, average pooling, flatten, residual additions,
concatenation) keeps its ordinary gradient, which is exactly LRP-0 there. With
``g`` the gradient arriving at a neuron of value ``a``, the neuron's relevance is
``a * g``, so one forward pass and one backward pass give the input relevance
``x * grad`` for the whole batch at once. Batch norm is merged into the layer that
feeds it (canonisation) inside the hooks, so the caller's model is never modified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salmap._validate import Bounds, BoundsLike, check_bounds, check_choice, check_number
from salmap.explain.base import Explainer
from salmap.explain.targets import Target
from salmap.gradients import Model, forward, frozen
from salmap.registry import register_explainer

#: layers whose relevance a :class:`Rule` redistributes.
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
CONV_LAYERS: tuple[type[nn.Module], ...] = LINEAR_LAYERS[1:]
#: layers that keep their plain gradient: it is LRP-0 for pooling and exact pass-through for the rest.
PASS_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: ``forward(a, weight, bias)``: the layer's own operation with other parameters.
LayerFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _stabilise(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1``, so that nothing is divided by zero."""
    return torch.where(z >= 0, z + eps, z - eps)


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
    (LRP explains the wrapped network on the normalised input, see :func:`lrp_relevance`)."""
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


def _layer_fn(module: Any) -> LayerFn:
    """The module's operation as a function of ``(input, weight, bias)``."""
    if isinstance(module, nn.Linear):
        return lambda a, w, b: F.linear(a, w, b)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.padding_mode != "zeros":
            raise ValueError(f"LRP supports zero padding only, got padding_mode={module.padding_mode!r}")
        conv: Any = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
        m = module
        return lambda a, w, b: conv(a, w, b, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        convt: Any = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[module.weight.dim() - 2]
        t = module
        return lambda a, w, b: convt(a, w, b, t.stride, t.padding, t.output_padding, t.groups, t.dilation)
    raise ValueError(f"no LRP layer function for {type(module).__name__}")


def _out_channel_view(module: Any, scale: Tensor) -> Tensor:
    """``scale`` (one per output channel) shaped to multiply the module's weight."""
    dims = module.weight.dim()
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # weight is (in, out / groups, ...): output channels on dim 1 (groups == 1 checked when merging).
        return scale.view(1, -1, *([1] * (dims - 2)))
    return scale.view(-1, *([1] * (dims - 1)))


def _batchnorm_affine(bn: Any, name: str) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``y = s * x + t``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"batch norm {name!r} has no running statistics; LRP cannot merge it")
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s.detach(), t.detach()


def check_supported(model: nn.Module) -> dict[nn.Module, str]:
    """Names of the model's modules; ``ValueError`` naming any layer LRP has no rule for."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        names.setdefault(module, name or "<model>")
        known = isinstance(module, LINEAR_LAYERS + PASS_LAYERS + NORM_LAYERS)
        leaf = next(module.children(), None) is None
        own_params = next(module.parameters(recurse=False), None) is not None
        if not known and (leaf or own_params):
            raise ValueError(
                f"LRP has no rule for layer {name or '<model>'!r} of type {type(module).__name__}; "
                f"supported: {sorted({t.__name__ for t in LINEAR_LAYERS + PASS_LAYERS + NORM_LAYERS})}"
            )
    return names


def _find_batchnorm_pairs(model: nn.Module, x: Tensor, names: dict[nn.Module, str]) -> dict[nn.Module, nn.Module]:
    """Linear layer -> the batch norm that takes its output directly (found on one forward pass)."""
    produced: dict[int, tuple[nn.Module, Tensor]] = {}
    pairs: dict[nn.Module, nn.Module] = {}
    unmerged: list[nn.Module] = []

    def on_linear(m: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
        produced[id(out)] = (m, out)  # the tensor is kept so that its id is not reused

    def on_norm(m: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
        entry = produced.get(id(inputs[0]))
        if entry is not None and entry[1] is inputs[0]:
            pairs[entry[0]] = m
        else:
            unmerged.append(m)

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, LINEAR_LAYERS):
                handles.append(m.register_forward_hook(on_linear))
            elif isinstance(m, NORM_LAYERS):
                handles.append(m.register_forward_hook(on_norm))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if unmerged:
        name = names.get(unmerged[0], "?")
        raise ValueError(
            f"batch norm layer {name!r} ({type(unmerged[0]).__name__}) does not directly follow a "
            "Conv/Linear layer; LRP can only merge batch norm into the layer before it"
        )
    for lin, bn in pairs.items():
        if isinstance(lin, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and lin.groups != 1:
            raise ValueError(f"LRP cannot merge batch norm {names[bn]!r} into a grouped transposed convolution")
    return pairs


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``factor`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, factor: Tensor) -> Tensor:
        ctx.save_for_backward(factor)
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def _ratio(y: Tensor, zk: Tensor, eps: float) -> Tensor:
    """``y / stabilise(zk)``, with zero where the denominator is zero (no relevance, not 0/0)."""
    den = _stabilise(zk, eps)
    if eps > 0:  # |den| >= eps: never zero
        return y / den
    zero = den == 0
    return torch.where(zero, torch.zeros_like(den), y / torch.where(zero, torch.ones_like(den), den))


def _self_ratio(y: Tensor, eps: float) -> Tensor:
    """``y / stabilise(y)`` in three element-wise passes: it is ``|y| / (|y| + eps)``, zero where ``y = 0 = eps``."""
    a = y.abs()
    if eps > 0:
        return a.div_(a + eps)
    return (a > 0).to(y.dtype)


@dataclass
class LRPPlan:
    """What one model needs for LRP, found once: module names and the batch norms merged into linear layers.

    Built by :func:`lrp_plan`; pass it to :func:`lrp_relevance` when explaining many batches of the
    same model (as the ISI attack does every iteration) so that it is not rebuilt per call.
    """

    names: dict[nn.Module, str]
    pairs: dict[nn.Module, nn.Module]


def lrp_plan(model: nn.Module, x: Tensor) -> LRPPlan:
    """Check that LRP supports ``model`` and find its conv/linear + batch-norm pairs (one forward of ``x[:1]``)."""
    from salmap.models.normalized import Normalized

    if isinstance(model, Normalized):
        x = model.normalize(x[:1].detach())
        model = model.model
    names = check_supported(model)
    with frozen(model):
        pairs = _find_batchnorm_pairs(model, x[:1].detach(), names)
    return LRPPlan(names, pairs)


@contextmanager
def _lrp_hooks(
    model: nn.Module, composite: Composite, x: Tensor, plan: LRPPlan, leaves: list[tuple[Tensor, Tensor]],
) -> Iterator[None]:
    """Forward hooks that give every linear layer its rule's gradient; removed on exit.

    Each hook returns the layer's own output ``z`` unchanged in value. The epsilon rule
    needs no extra computation: its redistribution ``J^T (g * y / stabilise(y))`` is the
    layer's ordinary gradient applied to ``g`` scaled element-wise, so the hook only
    attaches that scale to ``z`` (:class:`_ScaleGrad`); the whole pass then costs one
    forward and one backward. Rules that weigh contributions differently (z+, alpha-beta,
    z^B) need the layer's modified forward passes ``z_k`` and route the gradient through them.
    """
    names, pairs = plan.names, plan.pairs

    def hook(module: Any, inputs: tuple[Any, ...], z: Tensor) -> Tensor:
        a = inputs[0]
        is_input = a is x
        name = names.get(module, "?")
        rule = composite.rule_for(module, is_input)
        if rule is None:
            raise ValueError(f"the composite has no rule for layer {name!r} of type {type(module).__name__}")
        weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
        bn = pairs.get(module)
        zd = z.detach()
        if bn is not None:
            # Canonisation: rules see conv+BN as one layer (W' = s W, b' = s b + t), whose output is
            # y = s z + t; the BN that follows multiplies the gradient by s, so the factors divide by it.
            s, t = _batchnorm_affine(bn, names.get(bn, "?"))
            shape = [1, -1] + [1] * (z.dim() - 2)
            weight = weight * _out_channel_view(module, s)
            bias = t if bias is None else s * bias + t
            y = torch.addcmul(t.view(shape), zd, s.view(shape))
            scale: Tensor | None = torch.where(s == 0, torch.ones_like(s), s).view(shape)
        else:
            y, scale = zd, None
        if isinstance(rule, Epsilon) and type(rule).terms is Epsilon.terms:
            # z_k is the (merged) layer itself: scale the gradient, no second forward pass. The
            # gradient then runs through the unmerged layer, and the BN's own factor s turns W into
            # the merged s W on the way, so no division by s here.
            return _ScaleGrad.apply(z, _self_ratio(y, rule.eps))
        ctx = RuleContext(name, is_input)
        out = zd
        for zk, coef, eps in rule.terms(_layer_fn(module), a, weight, bias, ctx):
            factor = _ratio(y, zk.detach(), eps)
            if scale is not None:
                factor = factor / scale
            # Equal to z in value; its gradient is coef * J_k^T (g * y / stabilise(z_k)).
            out = out + coef * _ScaleGrad.apply(zk - zk.detach(), factor)
        leaves.extend(ctx.leaves)
        return out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LINEAR_LAYERS)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lrp_relevance(
    model: nn.Module,
    x: Tensor,
    cotangent: Callable[[Tensor], Tensor],
    composite: Composite,
    plan: LRPPlan | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LRP of ``sum(cotangent(out) * out)`` per sample: one forward and one backward pass.

    Parameters
    ----------
    model: a ``torch.nn.Module`` of supported layers (see :func:`check_supported`).
    x: input batch; not modified.
    cotangent: function of the (detached) output giving the starting weights ``w``; the
        output layer's relevance is ``w * out`` (one-hot ``w``: the class logit).
    composite: the rules.
    plan: :func:`lrp_plan` of ``model``, reused across calls; built here when ``None``.

    Returns
    -------
    (out, relevance, grad): the detached model output (of the same forward pass), the
    input relevance (shaped like ``x``), and the modified gradient at ``x``
    (``relevance = x * grad`` except where the z^B rule adds the bounds' share); the sign
    of ``grad`` is the direction in which a feature's relevance grows.

    Examples
    --------
    >>> out, relevance, grad = lrp_relevance(model, x, lambda o: o.softmax(1), make_composite("epsilon"))  # doctest: +SKIP

    For a :class:`~salmap.models.Normalized` model, the wrapped network is explained on the
    normalised batch (the normalisation is not a layer LRP has rules for); the relevance of a
    normalised feature is that of its pixel, and ``grad`` is taken at the normalised input.
    Build its composite with :func:`lrp_input_bounds`.
    """
    from salmap.models.normalized import Normalized

    if isinstance(model, Normalized):
        x = model.normalize(x.detach())
        model = model.model
    if plan is None:
        plan = lrp_plan(model, x)
    xg = x.detach().requires_grad_(True)
    leaves: list[tuple[Tensor, Tensor]] = []
    with frozen(model), torch.enable_grad():
        with _lrp_hooks(model, composite, xg, plan, leaves):
            out = forward(model, xg)
        weights = cotangent(out.detach()).to(out.dtype)
        wrt = [xg] + [leaf for leaf, _ in leaves]
        grads = torch.autograd.grad(out, wrt, grad_outputs=weights, allow_unused=True)
    grad = torch.zeros_like(xg) if grads[0] is None else grads[0].detach()
    relevance = xg.detach() * grad
    for (leaf, _), g in zip(leaves, grads[1:], strict=True):
        if g is not None:
            relevance = relevance + leaf.detach() * g
    return out.detach(), relevance, grad


@register_explainer("lrp", needs_module=True, ranges={"eps": "(0, inf)"})
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
