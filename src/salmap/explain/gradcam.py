"""Grad-CAM (Selvaraju et al. 2017): class activation maps weighted by gradients."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salmap._validate import check_flag, check_input
from salmap.explain.base import Explainer, Resolver
from salmap.explain.targets import Target
from salmap.gradients import Model, forward, frozen, mode_is_fixed, output_vjps
from salmap.models.normalized import unwrap
from salmap.precision import PRECISIONS, autocast, check_precision
from salmap.registry import register_explainer

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of ``model`` called ``name`` (dotted, e.g. ``layer4`` or ``features.3``).

    Raises ``ValueError`` naming the close names when there is no such module.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"layer must be a dotted module name such as 'layer4', got {name!r}")
    names = [n for n, _ in model.named_modules() if n]
    inner = model.model if getattr(model, "salmap_wraps", False) else None
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = model.module  # the network's own names work too ('layer4' beside 'module.layer4')
    if name not in names and isinstance(inner, nn.Module):
        # salmap's wrappers (Normalized, SelectOutput, ...): the wrapped network's names work too.
        try:
            return find_layer(inner, name)
        except ValueError:
            pass
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
        raise ValueError(f"layer {name!r} is not a module of {type(model).__name__}; {hint}")
    return dict(model.named_modules())[name]  # get_submodule fails inside TorchScript modules: refused by name later


def layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """``layer`` as a dotted name: a submodule of ``model`` given as the module itself (captum's
    ``LayerGradCam(model, model.layer4)``, pytorch-grad-cam's ``target_layers``) becomes its name."""
    if not isinstance(layer, nn.Module):
        return layer
    name = next((n for n, m in model.named_modules() if m is layer), None)
    if not name:
        what = "the model itself" if name == "" else f"a {type(layer).__name__} that is not one of its modules"
        raise ValueError(f"layer must be a submodule of the model ({type(model).__name__}) or its dotted name, got {what}")
    return name


def default_layer(model: nn.Module) -> str:
    """``layer4`` when the model has one (ResNets), else its last convolution (names of the
    network inside salmap's wrappers, which :func:`find_layer` also accepts)."""
    while getattr(model, "salmap_wraps", False) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.get_submodule("model")
    names = dict(model.named_modules())
    if "layer4" in names:
        return "layer4"
    kinds = ("Conv1d", "Conv2d", "Conv3d")  # TorchScript submodules keep the class name as original_name
    convs = [n for n, m in names.items()
             if n and (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or getattr(m, "original_name", "") in kinds)]
    if not convs:
        raise ValueError(f"layer is needed: {type(model).__name__} has no layer4 and no convolution")
    return convs[-1]


@register_explainer("gradcam", needs_module=True, hooks=True, choices={"precision": PRECISIONS})
class GradCAM(Explainer):
    """Gradient-weighted class activation map of one layer, upsampled to the input size.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017. With ``A_k`` the layer's activation
    channels and ``S_t`` the target score, the channel weights are the spatial means of
    the gradient, ``w_k = mean_ij dS_t / dA_kij``, and the map is
    ``ReLU(sum_k w_k A_k)``, upsampled (bilinear; linear/trilinear for 1-D/3-D layers)
    to the input's spatial size. For a segmenter the score is a class's summed scores
    over a pixel mask (Vinogradova et al. 2020, "Towards Interpretable Semantic
    Segmentation via Gradient-weighted Class Activation Mapping").

    The whole batch costs one forward pass and one vector-Jacobian product that stops at
    the layer (:func:`salmap.gradients.output_vjps`). The forward hook that captures the
    activation is removed in ``finally``, even when the model raises. From Python, ``layer`` may
    also be the module itself (``layer=model.layer4``, as captum and pytorch-grad-cam take it).
    A layer whose output has no usable form is refused after the forward pass, before the
    backward one; :meth:`check_layer` refuses it before any work (one sample's forward pass).

    Parameters
    ----------
    model: a ``torch.nn.Module``, classifier ``(B, K)`` or segmenter ``(B, K, H, W)``.
    layer: dotted name of a module whose output is ``(B, channels, *spatial)``, e.g.
        ``"layer4"`` (ResNet), ``"features.8"`` (lenet's last convolution block); default
        ``layer4`` if the model has one, else its last convolution. If the module runs
        several times in one forward pass, its last call is used.
    relu: apply the ReLU (default ``True``, as in the paper); ``False`` keeps negative evidence.
    reshape: turns the layer's output (and its gradient) into ``(B, channels, *spatial)``, like
        pytorch-grad-cam's ``reshape_transform``. Default: outputs that already have that form
        are used as they are, and transformer token outputs ``(B, 1 + h*w, C)`` (a class token,
        then a grid of patches with the input's aspect ratio) or ``(B, h*w, C)`` become
        ``(B, C, h, w)`` with the class token dropped. Anything else is an error naming the shape.
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the forward and backward passes
        under autocast (see :mod:`salmap.precision`), faster on a GPU for large models; the map
        is computed in the input's dtype from the 16-bit activation and gradient (float16 also
        flushes gradients below about 6e-8 to zero; bfloat16 has float32's range).

    Returns
    -------
    :meth:`attribute` returns ``(B, 1, *input_spatial)``.

    Examples
    --------
    >>> cam = GradCAM(resnet34, layer="layer4").attribute(images, target=labels)  # doctest: +SKIP
    >>> cam.shape                                                               # doctest: +SKIP
    torch.Size([16, 1, 224, 224])
    """

    def __init__(
        self, model: Model, layer: str | nn.Module | None = None, relu: bool = True,
        reshape: Callable[[Tensor], Tensor] | None = None, precision: str = "fp32",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module for Grad-CAM (layers by name), got {type(model).__name__}")
        super().__init__(model)
        if any(mode_is_fixed(m) for m in model.modules()):  # before a layer is looked for: none would fire
            raise ValueError(
                f"Grad-CAM needs a forward hook on {'a layer' if layer is None else f'layer {layer!r}'}, and a "
                "torch.export (.pt2) module runs its graph without calling its submodules, so no hook fires; "
                "explain the eager model (checkpoint folder or module:factory), or use gradient or occlusion on this one"
            )
        layer = default_layer(model) if layer is None else layer_name(model, layer)
        self.layer = layer
        scripted = isinstance(model, torch.jit.ScriptModule)
        self._module = None if scripted else find_layer(model, layer)
        if scripted or isinstance(self._module, torch.jit.ScriptModule):
            raise ValueError(
                f"Grad-CAM needs a forward hook on layer {layer!r}, and TorchScript modules do not support "
                "hooks; explain the eager model (checkpoint folder or module:factory), "
                "or use gradient or occlusion on this one"
            )
        self.relu = check_flag("relu", relu)
        if reshape is not None and not callable(reshape):
            raise ValueError(f"reshape must be a function of the layer's output, got {type(reshape).__name__}")
        self.reshape = reshape
        self.precision = check_precision(precision)

    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        return self._explain(x, lambda out: target)

    def _explain(self, x: Tensor, resolve: Resolver) -> Tensor:
        if x.dim() < 3:
            raise ValueError(f"x must be (B, C, *spatial) for Grad-CAM, got shape {tuple(x.shape)}")
        with self._captured() as captured, autocast(self.precision, x.device):
            _, (grad,) = output_vjps(self.model, x, [lambda out: resolve(out).weights(out)],
                                     wrt=lambda: self._activation(captured, x))
        raw = captured[-1]
        raw = raw[0] if isinstance(raw, (tuple, list)) else raw
        act, grad = self._as_maps(raw.detach().to(x.dtype), x), self._as_maps(grad.to(x.dtype), x)
        weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
        cam = (weights * act).sum(dim=1, keepdim=True)
        if self.relu:
            cam = cam.clamp_min(0)
        size = tuple(x.shape[2:])
        if tuple(cam.shape[2:]) != size:
            if len(size) not in _MODES:
                raise ValueError(f"Grad-CAM upsamples 1-D to 3-D maps, got input shape {tuple(x.shape)}")
            cam = F.interpolate(cam, size=size, mode=_MODES[len(size)], align_corners=False)
        return cam

    def check_layer(self, x: Tensor, flag: str | None = None) -> None:
        """Refuse, before any work, a layer whose output Grad-CAM cannot use (what :meth:`attribute`
        finds after its forward pass): one forward pass of ``x``'s first sample without gradients, and
        a one-line ``ValueError`` naming the layer, its output's shape and the shapes expected.
        ``flag``: what a front end without ``reshape`` calls the layer (``--layer``): the message names
        it so, without the advice to pass ``reshape``."""
        sample = check_input(x)[:1]
        if sample.dim() < 3:
            raise ValueError(f"x must be (B, C, *spatial) for Grad-CAM, got shape {tuple(x.shape)}")
        try:
            with self._captured() as captured, frozen(self.model), torch.no_grad():
                forward(self.model, sample.clone())
            self._activation(captured, sample)
        except ValueError as err:
            if flag is None or not str(err).startswith("layer "):
                raise
            raise ValueError(flag + str(err)[len("layer"):].split("; pass reshape=")[0]) from None

    @contextmanager
    def _captured(self) -> Iterator[list[Any]]:
        """The outputs of the layer in the block's forward passes (a forward hook, removed after)."""
        captured: list[Any] = []

        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            captured.append(output)

        assert self._module is not None
        handle = self._module.register_forward_hook(keep)
        try:
            yield captured
        finally:
            handle.remove()

    def _activation(self, captured: list[Any], x: Tensor) -> Tensor:
        """The layer's output the hook kept last, refused (before the backward pass) when Grad-CAM cannot use it."""
        if not captured:
            raise ValueError(f"layer {self.layer!r} did not run in the model's forward pass")
        act = captured[-1]
        if isinstance(act, (tuple, list)) and act and isinstance(act[0], Tensor):
            act = act[0]  # layers that return (hidden states, extras...)
        if not isinstance(act, Tensor) or act.shape[0] != x.shape[0]:
            shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
            raise ValueError(f"layer {self.layer!r} must output a (B, ...) tensor, got {shape}")
        self._as_maps(act.detach(), x)
        return act

    def _as_maps(self, act: Tensor, x: Tensor) -> Tensor:
        """The layer output as ``(B, channels, *spatial)`` (see ``reshape``)."""
        if self.reshape is not None:
            out = self.reshape(act)
            if not isinstance(out, Tensor) or out.dim() != x.dim() or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"reshape must return (B, channels, *spatial) with {x.dim() - 2} spatial dimensions, got {shape}"
                )
            return out
        if act.dim() == x.dim():
            # Keras (salmap.models.keras) image layers are channels-last: (B, *spatial, C)
            return act.movedim(-1, 1) if getattr(unwrap(self.model), "layers_channels_last", False) else act
        if act.dim() == 3 and x.dim() == 4:
            return tokens_to_maps(act, tuple(x.shape[2:]), self.layer)
        raise ValueError(
            f"layer {self.layer!r} must output (B, channels, *spatial) with the input's {x.dim() - 2} spatial "
            f"dimensions or transformer tokens (B, 1 + h*w, C), got {tuple(act.shape)}; pass reshape= to convert it"
        )


def tokens_to_maps(tokens: Tensor, size: tuple[int, ...], layer: str = "layer") -> Tensor:
    """Transformer tokens ``(B, N, C)`` as maps ``(B, C, h, w)``.

    ``N`` is ``1 + h*w`` (a class token first, dropped) or ``h*w``, with ``h/w`` the aspect
    ratio of the input ``size`` ``(H, W)``.
    """
    b, n, c = tokens.shape
    height, width = size
    for extra in (1, 0):
        cells = n - extra
        if cells <= 0:
            continue
        # the grid with the input's aspect ratio: h * w = cells, h / w = H / W
        h = round(math.sqrt(cells * height / width))
        w = cells // h if h > 0 else 0
        if h > 0 and h * w == cells and abs(h / w - height / width) <= 0.05 * height / width:
            return tokens[:, extra:].reshape(b, h, w, c).permute(0, 3, 1, 2)
    raise ValueError(
        f"layer {layer!r} outputs {n} tokens of {c} channels, which is neither 1 + h*w nor h*w for a grid "
        f"with the input's aspect ratio {height}x{width}; pass reshape= to turn them into (B, C, h, w)"
    )
