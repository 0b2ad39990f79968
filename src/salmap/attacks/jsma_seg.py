"""JSMA for segmentation models: change few input features until the model predicts a target mask.

The attacker holds a *target mask*, the class-index segmentation ``(B, H, W)`` it wants
the model to output, and changes input features chosen by a saliency map until the
fraction of pixels predicted as the target reaches ``required``, or until ``gamma`` of
the input features have been changed. The maps (``"jsma"``, Papernot et al.'s map over
pixel sums, and ``"masked"``, the method we started from) are in
:mod:`salmap.attacks.seg_saliency`; target masks for common goals in :mod:`salmap.targets`
and regions in :mod:`salmap.attacks.seg_goals` (both re-exported here).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from salmap import _validate
from salmap._validate import BoundsLike, as_index_tensor, check_choice, check_number, clip_features
from salmap.attacks.base import Attack
from salmap.attacks.seg_goals import RegionFn, outside, region_mask, resize_mask
from salmap.attacks.seg_saliency import choose, derivatives, output_mask
from salmap.gradients import Model, active_set_loop
from salmap.metrics import mask_from_output, pixel_accuracy, segmentation_iou
from salmap.progress import bar as progress_bar
from salmap.registry import register_attack
from salmap.targets import add_mask_of, hide_object, predict_masks, relabel_class

__all__ = ["SegmentationJSMA", "add_mask_of", "hide_object", "outside", "predict_masks", "relabel_class"]

log = logging.getLogger(__name__)

#: Smallest pool of features the pair searches of one iteration share (see :class:`~salmap.pair_pool.PairPool`).
_POOL = 1024


@register_attack(
    "jsma-seg", tasks=("segmentation",), default_targeting="hide",
    choices={"map": ("jsma", "masked")},
    named={"region": {"all": lambda: None, "outside": lambda: outside()}},
    flags={"single": ("pairs", False), "global-domain": ("local", False)}, budget={"l0_fraction": "gamma"},
    ranges={"gamma": "(0, 1]", "required": "(0, 1]", "k": "[1, inf)", "candidates": "[2, inf)", "chunk_size": "[1, inf)", "max_iterations": "[1, inf)"},
)
class SegmentationJSMA(Attack):
    """JSMA for segmenters: make the model predict a target mask with few changed features.

    Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", 2016,
    with the saliency map taken over pixel sums of a segmentation (see
    :mod:`salmap.attacks.seg_saliency` for both maps). Targeted only:
    ``attack(x, target=masks)`` with class-index masks ``(B, H, W)`` of the model's
    *output* size (which may differ from the input size); a single ``(H, W)`` mask is used
    for every image.

    Each iteration costs one forward pass and two VJPs (one for a binary model) over the
    images still running. An image stops when the fraction of its pixels predicted as
    the target reaches ``required`` (success), when the next change would take it past
    ``floor(gamma * n)`` changed features (``n`` input features per image), or when no
    admissible feature is left. Each change is by ``theta`` (clipped to the bounds). With
    ``map="jsma"`` a feature is changed at most once, in either direction, and then leaves
    the search domain (Papernot et al.); with ``map="masked"`` a feature only goes up, and
    may be chosen again until it reaches the upper bound, as in the starting method.
    ``gamma`` counts distinct changed features. With ``local`` (``map="jsma"``; the default
    unless a ``region`` is given) the features that may change in an iteration are those
    under the pixels that do not match the target yet (see :mod:`salmap.attacks.seg_saliency`,
    which also defines the step-weighted saliency). The ``k`` pair searches of an iteration share one pool of promising
    features, and stay exact (see :class:`~salmap.pair_pool.PairPool`); on CUDA they are arg-maxes over the
    pair scores of a pool of at least 2,048 features, without host synchronisation, and pick the same pairs
    (see :func:`salmap.attacks.seg_saliency.choose`).

    Models: a ``(B, 1, H, W)`` output is one binary logit per pixel (classes 0 and 1,
    class 1 where the logit is positive); ``(B, C, H, W)`` outputs are class scores.

    Parameters
    ----------
    model: segmenter returning ``(B, 1, H, W)`` logits or ``(B, C, H, W)`` scores.
    theta: change applied to each chosen feature, ``> 0`` (``1.0`` saturates ``[0, 1]`` inputs).
    gamma: largest fraction of the input features that may change, in ``(0, 1]``.
    required: fraction of pixels that must match the target, in ``(0, 1]``.
    map: ``"jsma"`` (default) or ``"masked"`` (the starting method, see above).
    pairs: pairwise map (default) or single features; ``map="masked"`` always picks single features.
    k: selections (pairs or single features) changed per iteration, greedily from one
        gradient; a larger ``k`` makes large images affordable.
    region: which input features may change: ``None`` (all), a bool tensor of shape
        ``x.shape``, ``x.shape[1:]``, ``(B, H, W)`` or ``(H, W)`` (broadcast over channels),
        or ``region(x, target, clean_prediction) -> mask`` (for example only outside the
        attacked object; see :func:`outside`).
    probabilities: differentiate softmax (sigmoid) outputs instead of logits (``map="jsma"``).
    local: only change input features under the pixels that do not match the target yet
        (``map="jsma"``; needs outputs spatially aligned with the input, at any scale).
        ``None`` (default): local unless a ``region`` is given, since a region such as
        :func:`outside` (only outside the object) is where the caller wants the changes.
    candidates: restrict the pair search to that many features (see
        :func:`~salmap.pair_search.select_features`); ``None`` is exact. Approximate either way, and the
        two ways may pick different pairs: on the CPU each selection searches the ``candidates`` most
        promising features of a pool of ``max(1024, 4 k, 2 candidates)`` per direction; on CUDA each
        searches all pairs of a pool of ``max(2048, 4 k, 2 candidates)`` features exactly (the pools: the
        features of highest :func:`~salmap.pair_search.pair_bound`, on CUDA both directions' in turn).
    chunk_size: rows of the pair matrix scored at a time; ``None`` sizes blocks to about
        ``2**24`` pair scores.
    max_iterations: optional cap on iterations per image.
    progress: show a progress bar of the iterations.
    bounds: valid input range ``(low, high)``.

    Examples
    --------
    >>> attack = SegmentationJSMA(unet, theta=1.0, gamma=0.1, required=0.99)    # doctest: +SKIP
    >>> result = attack(x, target=hide_object(predict_masks(unet, x)))        # doctest: +SKIP
    >>> result.success, result.extra["pixel_accuracy"], result.l0_fraction    # doctest: +SKIP
    """

    supports_untargeted = False

    def __init__(
        self,
        model: Model,
        theta: float = 1.0,
        gamma: float = 0.1,
        required: float = 0.99,
        map: str = "jsma",
        pairs: bool = True,
        k: int = 1,
        region: Tensor | RegionFn | None = None,
        probabilities: bool = False,
        local: bool | None = None,
        candidates: int | None = None,
        chunk_size: int | None = None,
        max_iterations: int | None = None,
        progress: bool = False,
        bounds: BoundsLike = (0.0, 1.0),
    ) -> None:
        super().__init__(model, bounds)
        self.theta = float(check_number("theta", theta, low=0.0, low_open=True))
        self.gamma = float(check_number("gamma", gamma, low=0.0, high=1.0, low_open=True))
        self.required = float(check_number("required", required, low=0.0, high=1.0, low_open=True))
        self.map = check_choice("map", map, ("jsma", "masked"))
        self.pairs = _validate.check_flag("pairs", pairs) and self.map == "jsma"
        self.k = check_number("k", k, low=1, integer=True)
        if region is not None and not isinstance(region, Tensor) and not callable(region):
            raise ValueError(f"region must be None, a bool tensor or a callable, got {type(region).__name__}")
        self.region = region
        self.probabilities = _validate.check_flag("probabilities", probabilities)
        self.local = None if local is None else _validate.check_flag("local", local)
        self.candidates = None if candidates is None else check_number(
            "candidates", candidates, low=2 if self.pairs else 1, integer=True
        )
        self.chunk_size = None if chunk_size is None else check_number("chunk_size", chunk_size, low=1, integer=True)
        self.max_iterations = None if max_iterations is None else check_number(
            "max_iterations", max_iterations, low=1, integer=True
        )
        self.progress = _validate.check_flag("progress", progress)

    # -- what the base class asks ----------------------------------------------
    def _labels_read_early(self, labels: Any) -> Any:
        return None  # masks are checked against the model's classes below

    def _check_labels(
        self, x: Tensor, labels: Any, targeted: bool, clean: Tensor,
        known_range: object = None,
    ) -> Tensor:
        if clean.dim() != 4:
            raise ValueError(
                f"model must return (B, classes, H, W) outputs for {type(self).__name__}, "
                f"got output of shape {tuple(clean.shape)}"
            )
        batch, channels, h, w = clean.shape
        classes = 2 if channels == 1 else channels
        labels = as_index_tensor(labels, "target", f"class-index masks (B, {h}, {w})")
        if tuple(labels.shape) == (h, w):
            labels = labels.expand(batch, h, w)
        if tuple(labels.shape) != (batch, h, w):
            raise ValueError(
                f"target must be class-index masks of the model's output size ({batch}, {h}, {w}) "
                f"or ({h}, {w}), got shape {tuple(labels.shape)}"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ValueError(
                f"target must hold classes in [0, {classes - 1}] (the model has {classes} classes), "
                f"got values in [{low}, {high}]"
            )
        return labels.to(device=x.device, dtype=torch.long).contiguous()

    def _predictions(self, out: Tensor) -> Tensor:
        return mask_from_output(out)

    def _is_success(self, out: Tensor, labels: Tensor, targeted: bool) -> Tensor:
        return pixel_accuracy(mask_from_output(out), labels) >= self.required

    def _extra(self, x: Tensor, x_adv: Tensor, labels: Tensor, clean: Tensor, after: Tensor) -> dict[str, Tensor]:
        classes = 2 if clean.shape[1] == 1 else clean.shape[1]
        before, pred = mask_from_output(clean), mask_from_output(after)
        changed = (x_adv != x).reshape(x.shape[0], -1).sum(dim=1)
        return {
            "pixel_accuracy": pixel_accuracy(pred, labels),
            "pixel_accuracy_before": pixel_accuracy(before, labels),
            "iou_target": segmentation_iou(pred, labels, classes),
            "iou_original": segmentation_iou(pred, before, classes),
            # The budget stops an image when another selection would not fit.
            "budget_spent": changed + self._per_selection > math.floor(self.gamma * x[0].numel()),
        }

    # -- the saliency map ----------------------------------------------------------
    @property
    def _per_selection(self) -> int:
        return 2 if self.pairs else 1

    def derivatives(
        self, x: Tensor, target: Tensor, channels: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The forward derivative the map reads: ``(outputs, alpha, beta)``
        (:func:`salmap.attacks.seg_saliency.derivatives` with this attack's map)."""
        return derivatives(self.model, x, target, self.map, self.probabilities, channels)

    def _mask(self, out: Tensor) -> Tensor:
        """Class-index masks of (possibly transformed) outputs."""
        return output_mask(out, self.map == "masked" or self.probabilities)

    def _choose(
        self, alpha: Tensor, beta: Tensor | None, flat: Tensor, domain: Tensor, allowed: Tensor,
        bounds: tuple[Any, Any],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Up to ``allowed`` selections per row from one gradient (:func:`salmap.attacks.seg_saliency.choose`);
        ``bounds`` are the features' bounds (:meth:`salmap._validate.Bounds.features`)."""
        return choose(
            alpha, beta, flat, domain, allowed, theta=self.theta, bounds=bounds, k=self.k, pairs=self.pairs,
            chunk_size=self.chunk_size, candidates=self.candidates, pool=self._pool_size,
        )

    # -- the attack ----------------------------------------------------------------
    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        batch, shape = x.shape[0], x.shape[1:]
        n = x[0].numel()
        flat = x.reshape(batch, n).clone()
        low, high = self.bounds.features(x)
        domain = region_mask(self.region, x, labels, clean).reshape(batch, n).clone()
        budget = math.floor(self.gamma * n)
        per = self._per_selection
        changed = torch.zeros(batch, dtype=torch.long, device=x.device)
        touched = torch.zeros(batch, n, dtype=torch.bool, device=x.device)
        bar = progress_bar(desc=f"jsma-seg ({self.map})", unit="it", enabled=self.progress)

        def one_step(rows: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            # No read of a device value: rows that stop choose nothing (allowed 0), and the
            # changes are written to every row (the unchanged values where nothing is valid).
            flat_r, domain_r, touched_r, changed_r, labels_r = (
                rows[k] for k in ("x", "domain", "touched", "changed", "labels")
            )
            out, alpha, beta = self.derivatives(flat_r.view(-1, *shape), labels_r, clean.shape[1])
            accuracy = pixel_accuracy(self._mask(out), labels_r)
            going = (accuracy < self.required) & (changed_r + per <= budget)
            allowed = torch.where(going, ((budget - changed_r) // per).clamp(max=self.k), 0)
            where = domain_r
            if self._local:
                # Only the input features under the pixels that do not match yet may change.
                wrong = self._mask(out) != labels_r
                where = where & resize_mask(wrong, shape[-2:]).bool()[:, None].expand(-1, *shape).reshape(-1, n)
            index, sign, valid = self._choose(alpha.reshape(-1, n), None if beta is None else beta.reshape(-1, n),
                                              flat_r, where, allowed, (low, high))
            if index.shape[1] == 0:  # nothing chosen in any row
                return torch.zeros_like(going), {}
            # Only features changed for the first time count against the budget.
            fresh = valid & ~touched_r.gather(1, index)
            valid = valid & (fresh.long().cumsum(dim=1) <= (budget - changed_r)[:, None])
            # The valid entries are a prefix of each row: the others repeat the row's first entry
            # (same feature, same new value), so that one scatter writes each feature once.
            stepped = valid[:, :1]
            index = torch.where(valid, index, index[:, :1])
            current = flat_r.gather(1, index)
            moved = clip_features(current + torch.where(valid, sign, sign[:, :1]) * self.theta, low, high, index)
            flat_r.scatter_(1, index, torch.where(stepped, moved, current))
            touched_r.scatter_(1, index, stepped | touched_r.gather(1, index))
            if self.map == "jsma":
                # Papernot et al.: a changed feature leaves the search domain
                domain_r.scatter_(1, index, ~stepped & domain_r.gather(1, index))
            changed_r.copy_(touched_r.sum(dim=1))
            bar.update(1)
            bar.set_postfix(active=flat_r.shape[0])
            return stepped[:, 0], {"x": flat_r, "domain": domain_r, "touched": touched_r, "changed": changed_r}

        state = {"x": flat, "domain": domain, "touched": touched, "changed": changed, "labels": labels}
        try:
            iterations = active_set_loop(state, one_step, self.max_iterations)
        finally:
            bar.close()
        if log.isEnabledFor(logging.DEBUG):  # a read of the device otherwise spared
            log.debug("jsma-seg: %d images, %d iterations at most", batch, int(iterations.max()))
        return flat.view_as(x), iterations

    @property
    def _local(self) -> bool:
        """Whether the domain of an iteration is cut to the features under the wrong pixels."""
        return self.map == "jsma" and (self.region is None if self.local is None else self.local)

    @property
    def _pool_size(self) -> int:
        """Features of the pool that the ``k`` pair searches of one iteration share."""
        return max(_POOL, 4 * self.k, 2 * (self.candidates or 0))
