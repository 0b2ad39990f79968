"""LRP in one forward and one backward pass: forward hooks give every linear layer its rule's gradient.

The *modified-gradient* formulation (as in zennit): each hook returns a tensor equal to the
layer's output whose gradient with respect to the layer's input is the rule's
redistribution; everything between those layers keeps its ordinary gradient (LRP-0), so
the input relevance is ``x * grad`` (plus the bounds' share for z^B). See :mod:`salmap.lrp`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from salmap.gradients import forward, frozen
from salmap.lrp.composites import Composite
from salmap.lrp.functions import watch
from salmap.lrp.layers import (
    LINEAR_LAYERS,
    batchnorm_affine,
    check_supported,
    find_batchnorm_pairs,
    layer_fn,
    out_channel_view,
)
from salmap.lrp.rules import Epsilon, RuleContext


def _stabilise(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = 1``, so that nothing is divided by zero."""
    return torch.where(z >= 0, z + eps, z - eps)


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


def explained(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """The module LRP explains for ``model``, and its input for ``x``, through wrappers in any order.

    A :class:`~salmap.models.Normalized` model: the wrapped network on the normalised batch (the
    normalisation is not a layer LRP has rules for). A model with a ``relevance_model()`` method:
    the module it returns, whose relevance stands for its own; if that module has a
    ``model_output()`` method, it gives the output of the model it stands for, from its last
    forward pass (EOT: the mean of the passes' logits is explained, the mean of the passes'
    relevance; its output stays the log of the mean softmax).
    """
    from salmap.models.normalized import Normalized

    for _ in range(8):  # (a stand-in that names another stand-in cannot loop for ever)
        stand_in: Any = getattr(model, "relevance_model", None)
        if callable(stand_in):
            model = stand_in()
        elif isinstance(model, Normalized):
            x = model.normalize(x)
            model = model.model
        else:
            break
    return model, x


@dataclass
class LRPPlan:
    """What one model needs for LRP, found once: module names and the batch norms merged into linear layers.

    Built by :func:`lrp_plan`; pass it to :func:`lrp_relevance` when explaining many batches of the
    same model (as the ISI attack does every iteration) so that it is not rebuilt per call.
    """

    names: dict[nn.Module, str]
    pairs: dict[nn.Module, nn.Module]
    #: whether the forward calls element-wise smooth functions, which :func:`lrp_relevance` then
    #: gives the pass rule (:mod:`~salmap.lrp.functions`); without them it runs no function mode.
    elementwise: bool = True


def lrp_plan(model: nn.Module, x: Tensor) -> LRPPlan:
    """Check that LRP supports ``model`` and find its conv/linear + batch-norm pairs (one forward of ``x[:1]``).

    The same forward pass is watched for functions LRP has no rule for (softmax, layer norm, a
    product of two activations: :mod:`~salmap.lrp.functions`), refused by name.
    """
    model, x = explained(model, x[:1].detach())
    names = check_supported(model)
    # the input requires grad, so that salmap.lrp.functions can tell what is computed from it
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        x1 = x.clone().requires_grad_()
        with watch(model, names, x1) as watched:
            pairs = find_batchnorm_pairs(model, x1, names)
    watched.check()
    return LRPPlan(names, pairs, watched.elementwise)


@contextmanager
def _lrp_hooks(
    model: nn.Module, composite: Composite, x: Tensor, plan: LRPPlan, leaves: list[tuple[Tensor, Tensor]],
) -> Iterator[None]:
    """Forward hooks that give every linear layer its rule's gradient; removed on exit.

    Each hook returns the layer's own output ``z`` unchanged in value. The epsilon rule
    needs no extra computation: its redistribution ``J^T (g * y / stabilise(y))`` is the
    layer's ordinary gradient applied to ``g`` scaled element-wise, so the hook only
    attaches that scale to ``z`` (a tensor hook); the whole pass then costs one
    forward and one backward. Rules that weigh contributions differently (z+, alpha-beta,
    z^B) need the layer's modified forward passes ``z_k`` and route the gradient through them.
    """
    names, pairs = plan.names, plan.pairs

    def hook(module: Any, inputs: tuple[Any, ...], z: Tensor) -> Tensor | None:
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
            s, t = batchnorm_affine(bn, names.get(bn, "?"))
            shape = [1, -1] + [1] * (z.dim() - 2)
            weight = weight * out_channel_view(module, s)
            bias = t if bias is None else s * bias + t
            y = torch.addcmul(t.view(shape), zd, s.view(shape))
            scale: Tensor | None = torch.where(s == 0, torch.ones_like(s), s).view(shape)
        else:
            y, scale = zd, None
        if isinstance(rule, Epsilon) and type(rule).terms is Epsilon.terms:
            # z_k is the (merged) layer itself: scale the gradient, no second forward pass. The
            # gradient then runs through the unmerged layer, and the BN's own factor s turns W into
            # the merged s W on the way, so no division by s here. A hook on z itself, not a new
            # tensor: the model may change z in place (nn.ReLU(inplace=True) after a convolution),
            # which autograd forbids on a custom function's view, and the hook still gets z's gradient.
            if z.requires_grad:
                factor = _self_ratio(y, rule.eps)
                z.register_hook(lambda g: g * factor)
            return None
        ctx = RuleContext(name, is_input)
        out = zd
        for zk, coef, eps in rule.terms(layer_fn(module), a, weight, bias, ctx):
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
    (out, relevance, grad): the detached model output (of the same forward pass; of the model a
    stand-in stands for, see :func:`explained`), the
    input relevance (shaped like ``x``), and the modified gradient at ``x``
    (``relevance = x * grad`` except where the z^B rule adds the bounds' share); the sign
    of ``grad`` is the direction in which a feature's relevance grows.

    Examples
    --------
    >>> out, relevance, grad = lrp_relevance(model, x, lambda o: o.softmax(1), make_composite("epsilon"))  # doctest: +SKIP

    For a :class:`~salmap.models.Normalized` model, the wrapped network is explained on the
    normalised batch (the normalisation is not a layer LRP has rules for); the relevance of a
    normalised feature is that of its pixel, and ``grad`` is taken at the normalised input.
    Build its composite with :func:`~salmap.lrp.lrp_input_bounds`.
    """
    model, x = explained(model, x.detach())
    if plan is None:
        plan = lrp_plan(model, x)
    xg = x.detach().requires_grad_(True)
    leaves: list[tuple[Tensor, Tensor]] = []
    with frozen(model), torch.enable_grad():
        with _lrp_hooks(model, composite, xg, plan, leaves), ExitStack() as stack:
            watched = stack.enter_context(watch(model, plan.names, xg, passing=True)) if plan.elementwise else None
            out = forward(model, xg)
        if watched is not None:
            watched.check()
        own_output = getattr(model, "model_output", None)
        real = own_output().detach() if callable(own_output) else out.detach()
        weights = cotangent(real).to(out.dtype)
        wrt = [xg] + [leaf for leaf, _ in leaves]
        grads = torch.autograd.grad(out, wrt, grad_outputs=weights, allow_unused=True)
    grad = torch.zeros_like(xg) if grads[0] is None else grads[0].detach()
    relevance = xg.detach() * grad
    for (leaf, _), g in zip(leaves, grads[1:], strict=True):
        if g is not None:
            relevance = relevance + leaf.detach() * g
    return real, relevance, grad
