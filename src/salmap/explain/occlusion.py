"""Occlusion maps (Zeiler and Fergus 2014): slide a patch over the input, watch the score drop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from salmap._validate import BoundsLike, check_bounds, check_flag, check_number, check_seed
from salmap.explain import occlusion_windows as geometry
from salmap.explain.base import Explainer, Resolver
from salmap.explain.occlusion_deltas import Deltas
from salmap.explain.occlusion_layouts import KeptForNextCall
from salmap.explain.occlusion_regions import cut
from salmap.explain.targets import Target
from salmap.folding import TraceCache
from salmap.gradients import Model, forward, predict
from salmap.logits import logits_of
from salmap.precision import (
    LOW_DTYPES,
    PRECISIONS,
    autocast,
    check_precision,
    in_layout,
    prefers_channels_last,
    tuned_convolutions,
)
from salmap.progress import bar as progress_bar
from salmap.registry import register_explainer

FILLS = ("zero", "mean", "grey", "random")


@register_explainer(
    "occlusion", choices={"fill": FILLS, "precision": PRECISIONS},
    ranges={"patch": "[1, inf)", "stride": "[1, inf)", "batch_size": "[1, inf)"},
)
class Occlusion(Explainer):
    """Occlusion sensitivity: how much the target score drops when a patch is hidden.

    Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
    (section 4.2). A patch of ``patch`` features per spatial dimension (covering every
    channel) slides over the input with ``stride``; each position replaces the patch by
    the ``fill`` and scores the drop of the target score against the unoccluded input,
    ``S_t(x) - S_t(x_occluded)``. That drop is added to every feature the patch covered,
    and each feature is divided by the number of patches that covered it.

    Patch positions per dimension are ``0, s, 2s, ...`` while the patch fits; when the
    stride does not divide ``size - patch``, one last patch is placed flush with the
    border (starting at ``size - patch``) so that the border is covered. With
    ``stride > patch`` the features between patches are never covered; their map is 0.

    Occluded copies are evaluated ``batch_size`` at a time (all images and positions
    mixed), so memory stays bounded by one batch of copies. Copies held on regions (below) need
    a fraction of a whole copy's memory: on CUDA, after the first batch (in later calls on images of
    that size, from the first), batches hold more copies, a quarter of the ratio of the values a
    whole copy and a region-held one keep alive at once (at most 16 times; on a resnet18 at 224x224
    with 16x16 patches and ``batch_size=16``, 4 times, and the call's peak memory was 1.1 times that
    of the model's own arithmetic on whole copies; not on the CPU, where they run slower). Copies that equal the input (the patch already holds the fill, e.g. zero-filling
    black background) are not evaluated: their drop is 0 by definition.

    Same maps as ``captum.attr.Occlusion``: with ``sliding_window_shapes=(C, *patch)``,
    ``strides=(1, *stride)`` and ``baselines`` set to the same fill, captum also divides each
    feature's summed drop by the number of windows that ablated it (its ``use_weights``). The
    positions agree when the stride divides ``size - patch`` in every dimension; otherwise
    captum's last window starts at ``ceil((size - patch) / stride) * stride`` and is cut off at
    the border, while here it is shifted back to start at ``size - patch``.

    Parameters
    ----------
    model: classifier ``(B, K)`` or segmenter ``(B, K, H, W)``.
    patch: patch size, one int for every spatial dimension or one per dimension.
    stride: step between patch positions (int or per dimension), ``>= 1``; default ``patch``.
    fill: what replaces the patch: ``"zero"``; ``"mean"`` (each image's mean, per channel);
        ``"grey"`` (mid-range of ``bounds``); ``"random"`` (one uniform random image in
        ``bounds`` drawn with ``seed``, the same for every sample); or a number.
    bounds: valid input range, used by ``"grey"`` and ``"random"``.
    batch_size: occluded copies per forward pass.
    seed: seed of the ``"random"`` fill.
    probabilities: score with softmax probabilities (sigmoid for a one-channel
        segmenter) instead of logits; Zeiler and Fergus plot the correct class's probability.
    progress: show a progress bar over the batches of copies.
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the occluded copies' forward passes
        in bfloat16 or float16 (see :mod:`salmap.precision`). For a model ``torch.fx`` can trace
        (the conditions of ``fold_batchnorm``), each copy's activations are differences from its
        clean image's (:mod:`salmap.explain.occlusion_deltas`), computed in the input's dtype for a
        group of images at once (at most a quarter of the values of ``batch_size`` whole copies):
        linear operations run on the differences in 16 bits, every other ``g`` gives
        ``g(a + d) - g(a)`` in the input's dtype, so the rounding is relative to the change
        occlusion measures (on a random-weight ResNet-18 at 224x224, whose logits move by about 1%,
        correlation to float32's maps above 0.9999; 0.93 under plain autocast). Batches then never
        mix images. A model in which a later operation reads a value written in place under its old
        name (``y.relu_()``, then ``y``), that merges the batch into another dimension, or that
        cannot be traced, runs under plain autocast (scores good to about 0.4% of a logit in
        bfloat16, 0.05% in float16: noisy maps where occlusion moves the scores by less).
    fold_batchnorm: fold each eval-mode batch norm into the convolution before it for the
        forward passes (:mod:`salmap.folding`: same function, one pass over the activations less,
        different rounding); the model traced with ``torch.fx`` through a private wrapper and
        the caller's model left as it is; the trace kept for the next call while the model's
        modules and attributes are the same (:class:`salmap.folding.TraceCache`; the folded
        weights computed again at every call). Models that cannot be traced, TorchScript, models
        with hooks or parametrizations, and models whose ``forward`` sets attributes on
        themselves run as they are. False: the model's own arithmetic on every whole copy.

    Regions: an occluded copy differs from its image in one patch, so its activations differ
    only in the patch's cone, which a convolution or pooling widens by its kernel and narrows by
    its stride. For 2-D images, a traceable model and ``fold_batchnorm`` (or a 16-bit
    ``precision``), each copy is its image's clean activations plus differences held on that
    cone (:mod:`salmap.explain.occlusion_regions`) while it is a small part of the activation:
    convolutions (no dilation, zero padding), max and average pooling, pointwise operations,
    batch norm and residual sums run on the region; the rest, and every layer once the region
    covers most of its activation, on the whole activation. Same function, different rounding
    (float32 maps within about 1e-6 of the model's on a ResNet-18, where the stem and layer1 run
    on 1-7% of their activations at 224x224 with 16x16 patches, layer2 on 8-29%). The index
    arithmetic is done once per batch layout (the patch positions of a batch: the same for every
    image whose patches all differ from the fill), kept for later images and the next call on
    images of that size (:mod:`salmap.explain.occlusion_layouts`; at most a quarter of the
    values of ``batch_size`` whole copies). A sum of two regions neither of which holds the
    other is detected (one read of the device per call) and the call is done again at full size.

    On CUDA every forward pass has the same batch shape (short batches of copies are padded
    with repeats) and cuDNN picks its fastest algorithms for that shape (``cudnn.benchmark``
    for the call, then restored). The copies are built in the channels-last layout on CUDA and
    for float32 and 16-bit images of at least 112x112 pixels on the CPU (cuDNN's and oneDNN's
    fastest convolutions take it; a model that fails on it, e.g. with a ``.view`` after a
    convolution, runs on the contiguous layout); the folded convolutions' weights are
    channels-last on CUDA. The float32 maps are the model's up to the last bits of the sums.

    Returns
    -------
    :meth:`attribute` returns a tensor shaped like ``x``; every channel holds the same map.

    Examples
    --------
    >>> heat = Occlusion(model, patch=4, stride=2, fill="zero").attribute(x, target=y)  # doctest: +SKIP
    >>> heat = Occlusion(resnet, patch=16, stride=8, fill="grey").attribute(images)     # doctest: +SKIP
    """

    outputs_only = "the occluded copies of x"  # its map: output differences only (refused when not finite)

    def __init__(
        self, model: Model,
        patch: int | Sequence[int] = 4,
        stride: int | Sequence[int] | None = None,
        fill: str | float = "zero",
        bounds: BoundsLike = (0.0, 1.0), batch_size: int = 256, seed: int = 0,
        probabilities: bool = False,
        progress: bool = False,
        precision: str = "fp32",
        fold_batchnorm: bool = True,
    ) -> None:
        super().__init__(model)
        self.patch = geometry.sizes("patch", patch)
        self.stride = self.patch if stride is None else geometry.sizes("stride", stride)
        if isinstance(fill, str) and fill not in FILLS:
            raise ValueError(f"fill must be one of {list(FILLS)} or a number, got {fill!r}")
        self.fill = fill if isinstance(fill, str) else float(check_number("fill", fill))
        self.bounds = check_bounds(bounds)
        self.batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        self.seed = check_seed(seed)
        self.probabilities = check_flag("probabilities", probabilities)
        self.progress = check_flag("progress", progress)
        self.precision = check_precision(precision)
        self.fold_batchnorm = check_flag("fold_batchnorm", fold_batchnorm)
        self._traces, self._deltas = TraceCache(), KeptForNextCall[Deltas]()

    @property
    def low(self) -> bool:
        """Whether the forward passes run in 16 bits."""
        return self.precision != "fp32"

    def _attribute(self, x: Tensor, target: Target) -> Tensor:
        return self._explain(x, lambda out: target)

    def _explain(self, x: Tensor, resolve: Resolver) -> Tensor:
        if x.dim() < 3:
            raise ValueError(f"x must be (B, C, *spatial) for occlusion, got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        patch, stride = geometry.patches(self.patch, self.stride, spatial)
        # One row per patch position and one column per feature, per spatial dimension:
        # a patch is the outer product of one row of each, so sums over patches separate.
        windows = [geometry.windows(n, k, s, x.device, x.dtype) for n, k, s in zip(spatial, patch, stride, strict=True)]
        grid = tuple(w.shape[0] for w in windows)

        # 2-D inputs: the occluded passes run on the region each patch can reach (float32 too, with
        # folding on); other inputs: 16-bit differences from the clean pass, or the model itself
        regions = x.dim() == 4 and (self.low or self.fold_batchnorm)
        traced = self._traces.trace(self.model, self.fold_batchnorm, always=self.low or regions)
        model = traced.module if traced is not None and traced.folded else self.model
        deltas = None
        if traced is not None and (self.low or regions):
            dtype = LOW_DTYPES[self.precision] if self.low else x.dtype
            key = (traced.module, dtype, x.device, x.dtype, x.shape[1:], patch, stride, self.batch_size)
            deltas = self._deltas.get(key, lambda: Deltas(traced.module, dtype, self.batch_size), Deltas.new_call)
            if not (deltas.exact and deltas.fits(x)):
                deltas = None  # an in-place write the graph hides, a batch it merges: plain autocast instead
        regions = regions and deltas is not None
        with tuned_convolutions(x.device):
            heat = self._occlude(model, deltas, x, resolve, windows, grid, patch, regions)
            if regions and deltas is not None and not deltas.regions_held():
                # a sum of two differences whose regions did not nest: again at full size
                heat = self._occlude(model, deltas, x, resolve, windows, grid, patch, False)
        if deltas is not None:
            deltas.end_call()  # (its clean values freed)
        return heat

    def _occlude(self, model: Model, deltas: Deltas | None, x: Tensor, resolve: Resolver,
                 windows: list[Tensor], grid: tuple[int, ...], patch: tuple[int, ...], regions: bool) -> Tensor:
        # The clean scores come from the same arithmetic as the occluded ones (model, layout,
        # precision; with differences from the clean pass, that pass is in the input's dtype).
        precision = "fp32" if deltas is not None else self.precision
        channels_last = prefers_channels_last(x)
        try:
            with torch.no_grad(), autocast(precision, x.device):
                out = predict(model, in_layout(x, channels_last, copy=True), self.batch_size)
        except RuntimeError:
            if not channels_last:
                raise
            # e.g. a ``.view`` that needs the contiguous layout: run the model as the caller does
            channels_last = False
            with torch.no_grad(), autocast(precision, x.device):
                out = predict(model, x.clone(), self.batch_size)
        out, images = out.to(x.dtype), in_layout(x, channels_last) if deltas is not None else x  # (differences')
        target = resolve(out)
        clean = target.score(self._transform(out))
        fill = geometry.fill_values(self.fill, self.bounds, self.seed, x)
        per_image = fill.dim() > 0 and fill.shape[0] > 1

        # Only (image, position) pairs whose patch differs from the fill change the input.
        differs = (x != fill).any(dim=1).to(x.dtype)
        changed = geometry.through_windows(differs, windows, transpose=True) > 0
        pairs = changed.flatten(1).nonzero()
        listed = pairs.cpu() if deltas is not None else pairs  # (on the host: the batches' bounds, the layouts' names)
        positions = listed[:, 1].numpy() if regions else None
        drops = torch.zeros(x.shape[0], math.prod(grid), dtype=x.dtype, device=x.device)
        # on CUDA, more region-held copies per batch once the first batch measured them (Deltas.growth)
        grows = regions and deltas is not None and geometry.grows(x.device)
        growth = deltas.growth() if grows and deltas is not None else None  # (None in the first call)
        chunks = geometry.chunks(listed[:, 0], x.shape[0], self.batch_size * max(1, growth or 1), deltas is not None)
        # On CUDA one batch shape for every pass: cuDNN tunes it once (short batches are padded).
        width = max((hi - lo for lo, hi, _ in chunks), default=0)
        fixed = x.is_cuda and len(chunks) > 1
        firsts = [w.argmax(dim=1) for w in windows]  # each patch position's first feature, per dimension
        keep, once = geometry.kept_layouts(chunks)  # (batch layouts kept for the next image)
        bar = progress_bar(total=len(chunks), desc="occlusion", unit="batch", enabled=self.progress)
        k = 0
        while k < len(chunks):
            lo, hi, i = chunks[k]
            k += 1
            bar.update(1)
            chunk = pairs[lo:hi]
            real = chunk.shape[0]
            if fixed and real < width:
                chunk = torch.cat([chunk, chunk[-1:].expand(width - real, -1)])
            image, pos = chunk.unbind(1)
            if regions and deltas is not None and positions is not None:
                # the patches' region and the index arithmetic kept on it, once per batch layout
                layout = (real, len(pos), positions[lo:hi].tobytes())
                starts = partial(geometry.patch_starts, firsts, pos, grid[1])
                region = deltas.patch_region(layout, starts, (patch[0], patch[1]), (x.shape[-2], x.shape[-1]),
                                             0 if i in once else keep)
                change = (fill[i : i + 1] if per_image else fill) - x[i : i + 1]
                patches = cut(change.expand(1, *x.shape[1:]), region)
                with torch.inference_mode():
                    out = logits_of(deltas.on_patches(images, i, patches, region))
            else:
                mask = geometry.patch_masks(pos, windows, grid)
                copies = in_layout(torch.where(mask.unsqueeze(1), fill[image] if per_image else fill, x[image]),
                                   channels_last)
                with torch.inference_mode():
                    if deltas is None:
                        with autocast(self.precision, x.device):
                            out = forward(model, copies)
                    else:
                        out = logits_of(deltas(images, i, copies))
            out = self._transform(out.to(x.dtype))
            image, pos, out = image[:real], pos[:real], out[:real]
            drops[image, pos] = clean[image] - target.select(image).score(out)
            if grows and deltas is not None and growth is None and k == 1 and len(chunks) > 1:
                if (factor := deltas.growth() or 1) >= 2:  # (the first batch done: later ones hold more)
                    rest = geometry.chunks(listed[hi:, 0], x.shape[0], self.batch_size * factor, by_image=True)
                    chunks = chunks[:1] + [(a + hi, b + hi, j) for a, b, j in rest]
                    keep, once = geometry.kept_layouts(chunks, grown=i)
                    width = max((b - a for a, b, _ in chunks[1:]), default=0)
                    fixed = x.is_cuda and len(chunks) > 2
                    bar.total = len(chunks)
        bar.close()
        total = geometry.through_windows(drops.view(-1, *grid), windows, transpose=False)
        count = geometry.through_windows(torch.ones(1, *grid, dtype=x.dtype, device=x.device), windows, transpose=False)
        heat = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
        return heat.unsqueeze(1).expand_as(x).contiguous()

    def _transform(self, out: Tensor) -> Tensor:
        if not self.probabilities:
            return out
        return torch.sigmoid(out) if out.dim() == 4 and out.shape[1] == 1 else torch.softmax(out, dim=1)

