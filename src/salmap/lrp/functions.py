"""Smooth functions in a model's forward: element-wise ones pass relevance on, the others are refused.

LRP's rules live on the linear layers; between them the modified-gradient pass
(:mod:`~salmap.lrp.propagation`) keeps the plain gradient, which is exact LRP-0 for ReLU,
pooling, additions, concatenation and constants. A smooth non-linearity would take its
plain gradient too, silently: relevance neither conserved nor what any rule prescribes.
So, outside the layers LRP knows (:data:`~salmap.lrp.layers.LINEAR_LAYERS`, norms, pass
layers), with ``a`` a tensor that depends on the input:

- an **element-wise** smooth function ``z = f(a)`` (:data:`ELEMENTWISE`: sigmoid, tanh,
  GELU, SiLU, ELU, softplus, exp, log, powers, ...), called as a function or through its module
  (``nn.Sigmoid``, ``nn.GELU``, ...), gets the *pass* rule of zennit's composites for
  activations: its output's relevance goes unchanged to its input, ``R(a) = R(z)``, a
  gradient of ``z / a`` in the ``relevance = a * gradient`` bookkeeping (stabilised: the
  relevance of an ``|a|`` below the dtype's epsilon is lost; so is that of ``f(0)`` for an
  ``a`` that is zero, such as a sigmoid after a ReLU, as a bias's is);
- a function that mixes features non-linearly (:data:`REFUSED`: softmax, log-softmax, layer,
  group and instance norm, ``F.normalize``, attention) or a **product or quotient of two
  input-dependent tensors** (gating, attention, ``x / x.norm()``) has no rule, and
  :func:`watch` names the first one in a one-line ``ValueError`` with the module whose
  forward called it.

Functions of the parameters alone (``torch.sigmoid(self.gate)``) and what runs under ``no_grad``
(a mask) are left as they are. Names are matched without ``special_`` (``torch.special.expit``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from salmap.lrp.layers import LINEAR_LAYERS, NORM_LAYERS, PASS_LAYERS

#: element-wise smooth functions (names without underscores at either end or ``special_``): the pass rule.
ELEMENTWISE: frozenset[str] = frozenset({
    "sigmoid", "expit", "tanh", "gelu", "silu", "elu", "selu", "celu", "softplus", "softsign", "mish",
    "hardswish", "hardsigmoid", "logsigmoid", "log_sigmoid", "tanhshrink", "logit", "exp", "exp2", "expm1", "log",
    "log2", "log10", "log1p", "pow", "rpow", "float_power", "square", "sqrt", "rsqrt", "reciprocal", "sin", "cos",
    "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "sinc", "erf", "erfc", "erfinv",
    "erfcx", "ndtr", "ndtri", "log_ndtr", "i0",
})
#: functions that mix features non-linearly: refused.
REFUSED: frozenset[str] = frozenset({
    "softmax", "log_softmax", "softmin", "logsumexp", "logcumsumexp", "glu", "layer_norm", "group_norm",
    "instance_norm", "batch_norm", "local_response_norm", "rms_norm", "normalize", "norm", "vector_norm",
    "var", "std", "var_mean", "std_mean", "cosine_similarity", "scaled_dot_product_attention", "prod", "cumprod",
})
#: products and quotients: refused when two of their tensors depend on the input.
PRODUCTS: frozenset[str] = frozenset({
    "mul", "rmul", "multiply", "matmul", "rmatmul", "mm", "bmm", "mv", "addmm", "addbmm", "addmv", "baddbmm",
    "einsum", "dot", "vdot", "inner", "outer", "ger", "kron", "tensordot", "cross", "linear", "bilinear",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "div", "divide",
    "truediv", "rtruediv", "true_divide", "floor_divide", "addcmul", "addcdiv", "xlogy", "hypot", "atan2",
})


def function_name(func: Callable[..., Any]) -> str:
    """``func``'s name without underscores at either end and ``special_`` (``Tensor.sigmoid_``, ``torch.sigmoid``,
    ``torch.special.expit``: ``sigmoid``, ``sigmoid``, ``expit``)."""
    name = str(getattr(func, "__name__", "")).strip("_")
    return name.removeprefix("special_")


def _inputs(args: Any, kwargs: dict[str, Any], x: Tensor | None) -> list[Tensor]:
    """The tensors among the call's arguments (also inside lists and tuples) computed from the input ``x``
    (the model's parameters are frozen: a tensor that needs a gradient and is not a leaf came from ``x``)."""
    flat = [*args, *kwargs.values()]
    flat = [t for item in flat for t in (item if isinstance(item, (list, tuple)) else (item,))]
    return [t for t in flat if isinstance(t, Tensor) and t.requires_grad and (t.grad_fn is not None or t is x)]


def _passed_on(func: Callable[..., Any], a: Tensor, args: Any, kwargs: dict[str, Any]) -> Tensor:
    """``func(*args)`` in value; its gradient at ``a`` is ``z / a``, so that ``a * gradient`` is the output's relevance."""
    raw = str(getattr(func, "__name__", ""))
    inplace = (raw.endswith("_") and not raw.endswith("__")) or kwargs.get("inplace") is True
    with torch.no_grad():
        value = a.detach().clone() if inplace else a.detach()
        z = func(*[value if item is a else item for item in args], **kwargs)
        z = value if inplace else z
        den = a.detach()
        eps = torch.finfo(den.dtype).eps if den.is_floating_point() else 0.0
        den = torch.where(den >= 0, den + eps, den - eps)
        ratio = z / den
    out = z + (a - a.detach()) * ratio
    return a.copy_(out) if inplace else out


class FunctionWatch(TorchFunctionMode):
    """Outside the layers LRP knows: records the first call it has no rule for, or (``passing``)
    gives element-wise smooth functions the pass rule."""

    def __init__(self, x: Tensor, passing: bool) -> None:
        super().__init__()
        self.x, self.passing = x, passing
        self.modules: list[str] = []  # the modules whose forward is running, innermost last
        self.inside_known = 0  # how many layers LRP knows are running (their insides are theirs)
        self.first: tuple[str, str] | None = None
        self.elementwise = False  # an element-wise smooth function of the input was called

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.inside_known == 0 and torch.is_grad_enabled():
            name = function_name(func)
            if name in ELEMENTWISE or name in REFUSED or name in PRODUCTS:
                inputs = _inputs(args, kwargs, self.x)
                if name in ELEMENTWISE and len(inputs) == 1:
                    self.elementwise = True
                    if self.passing:
                        return _passed_on(func, inputs[0], args, kwargs)
                refused = (name in REFUSED and inputs) or len(inputs) > 1
                if refused and self.first is None:
                    what = f"{name!r} of two activations" if len(inputs) > 1 else repr(name)
                    self.first = (what, self.modules[-1] if self.modules else "the model")
        return func(*args, **kwargs)

    def check(self) -> None:
        """``ValueError`` naming the first call LRP has no rule for, if any."""
        if self.first is None:
            return
        what, where = self.first
        raise ValueError(
            f"LRP has no rule for {what}, called in the forward of {where}; it would pass its plain gradient, "
            "not relevance: explain a model without it (logits, not probabilities), or use gradient or occlusion "
            "maps (ISI: indicator='sensitivity')"
        )


@contextmanager
def watch(model: nn.Module, names: dict[nn.Module, str], x: Tensor, passing: bool = False) -> Iterator[FunctionWatch]:
    """A :class:`FunctionWatch` over the forward passes of ``model`` on ``x`` (which requires grad) run
    inside; hooks removed on exit.

    Enter it after any other forward hooks of the pass: its own run last, so that what those
    hooks compute still counts as inside their layer.
    """
    mode = FunctionWatch(x, passing)
    known = LINEAR_LAYERS + NORM_LAYERS + PASS_LAYERS

    def enter(module: nn.Module, inputs: Any) -> None:
        where = "the model" if module is model else f"layer {names.get(module, '?')!r}"
        mode.modules.append(f"{where} ({type(module).__name__})")
        mode.inside_known += isinstance(module, known)

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        mode.modules.pop()
        mode.inside_known -= isinstance(module, known)

    with ExitStack() as stack:
        for module in model.modules():
            stack.callback(module.register_forward_pre_hook(enter, prepend=True).remove)
            stack.callback(module.register_forward_hook(leave, always_call=True).remove)
        with mode:
            yield mode
