"""Gradient saliency (sensitivity), Simonyan et al. 2014, and gradient x input."""

from __future__ import annotations

from torch import Tensor

from salmap._validate import check_flag
from salmap.explain.base import Explainer, Resolver
from salmap.explain.targets import Target
from salmap.gradients import Model, output_vjps
from salmap.precision import PRECISIONS, autocast, check_precision
from salmap.registry import register_explainer


@register_explainer("gradient", flags={"signed": ("absolute", False)}, choices={"precision": PRECISIONS})
class GradientSaliency(Explainer):
    """Gradient of the target score with respect to the input.

    Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps", 2014: the map is ``|d S_t / d x|``.
    ``absolute=False`` keeps the sign (which way each feature pushes the score);
    ``times_input=True`` gives gradient x input (Shrikumar et al. 2016,
    "Not Just a Black Box"), ``x * d S_t / d x``, taken absolute when ``absolute``.
    The target score ``S_t`` is the class logit for a classifier and the sum of a
    class's scores over a pixel mask for a segmenter (see :mod:`salmap.explain.targets`).

    The whole batch costs one forward pass and one vector-Jacobian product
    (:func:`salmap.gradients.output_vjps` with the target's one-hot weights as cotangent).

    Parameters
    ----------
    model: classifier ``(B, K)`` or segmenter ``(B, K, H, W)``.
    absolute: take the absolute value (default ``True``, as in Simonyan et al.).
    times_input: multiply the gradient by the input (default ``False``).
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward and backward passes
        under autocast (see :mod:`salmap.precision`), faster on a GPU for large models; the map
        keeps the input's dtype, its values good to the 16-bit format's precision (float16 also
        flushes gradients below about 6e-8 to zero; bfloat16 has float32's range).

    Returns
    -------
    :meth:`attribute` returns a tensor shaped like ``x`` (one value per input feature,
    channels kept; :mod:`salmap.plot` reduces channels for display).

    Examples
    --------
    >>> sal = GradientSaliency(model).attribute(x, target=y)             # doctest: +SKIP
    >>> gxi = GradientSaliency(model, absolute=False, times_input=True)  # doctest: +SKIP
    """

    def __init__(
        self, model: Model, absolute: bool = True, times_input: bool = False, precision: str = "fp32"
    ) -> None:
        super().__init__(model)
        self.absolute = check_flag("absolute", absolute)
        self.times_input = check_flag("times_input", times_input)
        self.precision = check_precision(precision)

    def _explain(self, x: Tensor, resolve: Resolver) -> Tensor:
        # The cotangent is resolved from the same forward pass whose VJP is taken.
        with autocast(self.precision, x.device):
            _, (grad,) = output_vjps(self.model, x, [lambda out: resolve(out).weights(out)])
        grad = grad.to(x.dtype)
        if self.times_input:
            grad = grad * x
        return grad.abs() if self.absolute else grad

    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        return self._explain(x, lambda out: target)
