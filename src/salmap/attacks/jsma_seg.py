"""JSMA for segmentation models: change few input features until the model predicts a target mask.

The attacker holds a *target mask*, the class-index segmentation ``(B, H, W)`` it wants
the model to output, and changes input features chosen by a saliency map until the
fraction of pixels predicted as the target reaches ``required``, or until ``gamma`` of
the input features have been changed.

Two saliency maps:

``map="jsma"`` (default)
    JSMA's map (Papernot et al. 2016) applied to pixel sums. Only the pixels ``M`` that
    do not yet match the target count. ``alpha`` is the gradient of the summed
    target-class scores over ``M``, ``beta`` the gradient of the summed scores of the
    other classes over ``M``; both come from one forward pass and two vector-Jacobian
    products (:func:`salmap.gradients.output_vjps`). Pairs (or single features) are
    chosen by :func:`salmap.attacks.jsma.select_features`, for an increase and for a
    decrease of the features, and the better of the two is taken per sample. Two
    refinements make the map work on images whose features lie anywhere in the bounds
    (measured on mnist-seg's add-a-digit goal: 0% success without them, 100% with them):

    * The saliency of a change is its first-order effect on the sums: a feature's
      ``alpha`` and ``beta`` are multiplied by the step it can actually take, ``theta``
      cut short by the bounds (``min(x + theta, high) - x`` for an increase,
      ``x - max(x - theta, low)`` for a decrease). Without it the map spends the budget
      on features already next to a bound (a stroke at 0.99 "increased" to 1), which
      change nothing and then leave the search domain. With inputs at the bounds (the
      paper's binarised MNIST and ``theta = +-1``) every step is ``theta`` and the map
      is Papernot et al.'s.
    * ``local`` (the default when no ``region`` is given): only the input features under
      the pixels of ``M`` (the output mask resized to the input's height and width,
      nearest neighbour) may change, the location prior of the starting method below. A segmenter's gradient is largest
      near what it already sees (the existing objects and clutter), so the unrestricted
      map paints there and turns correct pixels wrong, which ``M`` does not count.
      ``local=False`` is the map exactly as first specified.

``map="masked"``
    The method we started from: the element-wise gradient of the sigmoid output with a
    ones-like ``grad_outputs`` (one backward pass), multiplied by the target mask (kept
    where the target asks for class 1), and the most salient features are increased by
    ``theta``. For a multi-class model the sigmoid's place is taken by the softmax
    probability of each pixel's target class and the gradient is kept where the target
    asks for a class other than the background (class 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from salmap._validate import Bounds, as_index_tensor, check_choice, check_number
from salmap.attacks.base import Attack
from salmap.attacks.jsma import select_features
from salmap.metrics import mask_from_output, pixel_accuracy, segmentation_iou
from salmap.gradients import Model, frozen, output_vjps, predict
from salmap.registry import register_attack

__all__ = ["SegmentationJSMA", "add_mask_of", "hide_object", "predict_masks", "relabel_class"]

log = logging.getLogger(__name__)

#: ``region(x, target, clean_prediction) -> bool mask`` of the input features that may change.
RegionFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: Pair scores one block of the pair search may hold when ``chunk_size=None``.
_AUTO_BLOCK_ELEMENTS = 1 << 24
#: Smallest pool of features the pair searches of one iteration share (see :class:`_Search`).
_POOL = 1024


@register_attack(
    "jsma-seg", tasks=("segmentation",), default_targeting="hide",
    choices={"map": ("jsma", "masked")},
    ranges={"gamma": "(0, 1]", "required": "(0, 1]", "k": "[1, inf)", "candidates": "[2, inf)", "chunk_size": "[1, inf)", "max_iterations": "[1, inf)"},
)
class SegmentationJSMA(Attack):
    """JSMA for segmenters: make the model predict a target mask with few changed features.

    Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", 2016,
    with the saliency map taken over pixel sums of a segmentation (see the module
    docstring for both maps). Targeted only: ``attack(x, target=masks)`` with class-index
    masks ``(B, H, W)`` of the model's *output* size (which may differ from the input
    size); a single ``(H, W)`` mask is used for every image.

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
    under the pixels that do not match the target yet (see the module docstring, which also defines the step-weighted
    saliency). The ``k`` pair searches of an iteration share one pool of promising
    features, and stay exact (see :class:`_Search`).

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
        :func:`~salmap.attacks.jsma.select_features`); ``None`` is exact.
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
        bounds: Bounds = (0.0, 1.0),
    ) -> None:
        super().__init__(model, bounds)
        self.theta = float(check_number("theta", theta, low=0.0, low_open=True))
        self.gamma = float(check_number("gamma", gamma, low=0.0, high=1.0, low_open=True))
        self.required = float(check_number("required", required, low=0.0, high=1.0, low_open=True))
        self.map = check_choice("map", map, ("jsma", "masked"))
        self.pairs = bool(pairs) and self.map == "jsma"
        self.k = check_number("k", k, low=1, integer=True)
        if region is not None and not isinstance(region, Tensor) and not callable(region):
            raise ValueError(f"region must be None, a bool tensor or a callable, got {type(region).__name__}")
        self.region = region
        self.probabilities = bool(probabilities)
        self.local = None if local is None else bool(local)
        self.candidates = None if candidates is None else check_number(
            "candidates", candidates, low=2 if self.pairs else 1, integer=True
        )
        self.chunk_size = None if chunk_size is None else check_number("chunk_size", chunk_size, low=1, integer=True)
        self.max_iterations = None if max_iterations is None else check_number(
            "max_iterations", max_iterations, low=1, integer=True
        )
        self.progress = bool(progress)

    # -- what the base class asks ----------------------------------------------
    def _check_labels(self, x: Tensor, labels: Any, targeted: bool, clean: Tensor) -> Tensor:
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
        """The forward derivative the map reads: ``(outputs, alpha, beta)``.

        ``map="jsma"``: ``alpha`` is the gradient of the summed target-class scores over
        the pixels whose prediction differs from ``target``, ``beta`` that of the summed
        scores of all other classes over the same pixels (binary: ``beta = -alpha``).
        ``map="masked"``: ``alpha`` is the masked element-wise gradient of the starting
        method and ``beta`` is None. ``outputs`` are the model's outputs after the
        transform the map uses (none, sigmoid or softmax); ``alpha`` and ``beta`` are
        shaped like ``x``. The model is used as it is (wrap calls in
        :func:`salmap.gradients.frozen`). ``channels``, the model's output channels, saves
        a probing forward pass when known.
        """

        def not_matching(out: Tensor) -> Tensor:
            return (self._mask(out) != target).to(out.dtype)

        def onehot(out: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(target, out.shape[1]).permute(0, 3, 1, 2).to(out.dtype)

        if channels is None:
            with torch.no_grad():
                channels = int(self.model(x[:1]).shape[1])
        binary = channels == 1
        transform: Callable[[Tensor], Tensor] | None = None
        if self.map == "masked" or self.probabilities:
            transform = torch.sigmoid if binary else _softmax
        if self.map == "masked":
            # One backward pass with a ones-like grad_outputs on the (sigmoid) output.
            out, (grad,) = output_vjps(self.model, x, [torch.ones_like if binary else onehot], transform)
            keep = target == 1 if binary else target != 0
            return out, grad * _resize(keep, x.shape[-2:])[:, None].to(grad.dtype), None
        if binary:
            # Class 1 scores the logit (or the sigmoid), class 0 its negative (or 1 - sigmoid).
            sign = (2 * target - 1)[:, None]
            out, (alpha,) = output_vjps(
                self.model, x, [lambda o: sign.to(o.dtype) * not_matching(o)[:, None]], transform
            )
            return out, alpha, -alpha
        out, (alpha, total) = output_vjps(
            self.model, x,
            [lambda o: onehot(o) * not_matching(o)[:, None], lambda o: not_matching(o)[:, None].expand_as(o)],
            transform,
        )
        return out, alpha, total - alpha

    def _mask(self, out: Tensor) -> Tensor:
        """Class-index masks of (possibly transformed) outputs."""
        if out.shape[1] == 1:
            transformed = self.map == "masked" or self.probabilities
            return (out[:, 0] > (0.5 if transformed else 0.0)).long()
        return out.argmax(dim=1)

    # -- the attack ----------------------------------------------------------------
    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        batch, shape = x.shape[0], x.shape[1:]
        n = x[0].numel()
        flat = x.reshape(batch, n).clone()
        domain = self._region_mask(x, labels, clean).reshape(batch, n).clone()
        budget = math.floor(self.gamma * n)
        per = self._per_selection
        changed = torch.zeros(batch, dtype=torch.long, device=x.device)
        touched = torch.zeros(batch, n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(batch, dtype=torch.long, device=x.device)
        active = torch.arange(batch, device=x.device)
        bar = tqdm(desc=f"jsma-seg ({self.map})", unit="it", disable=not self.progress, leave=False)
        try:
            while active.numel():
                out, alpha, beta = self.derivatives(flat[active].view(-1, *shape), labels[active], clean.shape[1])
                accuracy = pixel_accuracy(self._mask(out), labels[active])
                going = (accuracy < self.required) & (changed[active] + per <= budget)
                if self.max_iterations is not None:
                    going &= iterations[active] < self.max_iterations
                rows = active[going]
                if rows.numel() == 0:
                    break
                allowed = ((budget - changed[rows]) // per).clamp(max=self.k)
                a = alpha.reshape(-1, n)[going]
                b = None if beta is None else beta.reshape(-1, n)[going]
                where = domain[rows]
                if self._local:
                    # Only the input features under the pixels that do not match yet may change.
                    wrong = self._mask(out[going]) != labels[rows]
                    where = where & _resize(wrong, shape[-2:]).bool()[:, None].expand(-1, *shape).reshape(-1, n)
                index, sign, valid = self._choose(a, b, flat[rows], where, allowed)
                # Only features changed for the first time count against the budget.
                fresh = valid & ~touched[rows[:, None], index]
                valid &= fresh.long().cumsum(dim=1) <= (budget - changed[rows])[:, None]
                hit = valid.any(dim=1)
                r = rows[:, None].expand_as(index)[valid]
                i = index[valid]
                flat[r, i] = (flat[r, i] + sign[valid] * self.theta).clamp(*self.bounds)
                touched[r, i] = True
                if self.map == "jsma":
                    domain[r, i] = False  # Papernot et al.: a changed feature leaves the search domain
                changed[rows] = touched[rows].sum(dim=1)
                iterations[rows[hit]] += 1
                active = rows[hit]
                bar.update(1)
                bar.set_postfix(active=int(active.numel()))
        finally:
            bar.close()
        log.debug("jsma-seg: %d images, %d iterations at most", batch, int(iterations.max()))
        return flat.view_as(x), iterations

    def _choose(
        self, alpha: Tensor, beta: Tensor | None, flat: Tensor, domain: Tensor, allowed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Up to ``allowed`` selections per row from one gradient.

        Returns feature indices ``(R, m)``, the sign of each change ``(R, m)`` and which
        entries are real selections ``(R, m)`` (a pair counts as two entries).
        """
        low, high = self.bounds
        up = domain & (flat < high)
        if beta is None:
            # The starting method: the most salient features (positive masked gradient) go up.
            score = torch.where(up & (alpha > 0), alpha, torch.full_like(alpha, -math.inf))
            top, index = torch.sort(score, dim=1, descending=True, stable=True)
            m = min(self.k, index.shape[1])
            valid = (top[:, :m] > -math.inf) & (torch.arange(m, device=flat.device) < allowed[:, None])
            return index[:, :m], torch.ones_like(top[:, :m]), valid
        down = domain & (flat > low)
        # The saliency of a change is its first-order effect on the scores: the gradient times
        # the step the feature can actually take (theta, cut short by the bounds).
        step_up = (flat + self.theta).clamp(max=high) - flat
        step_dn = flat - (flat - self.theta).clamp(min=low)
        a_up, b_up, a_dn, b_dn = alpha * step_up, beta * step_up, alpha * step_dn, beta * step_dn
        chunk = self.chunk_size or max(1, _AUTO_BLOCK_ELEMENTS // max(1, alpha.numel()))
        search_up = _Search(a_up, b_up, up, True, self.pairs, chunk, self.candidates, self._pool_size)
        search_dn = _Search(a_dn, b_dn, down, False, self.pairs, chunk, self.candidates, self._pool_size)
        picks, signs, valids = [], [], []
        live = torch.ones(alpha.shape[0], dtype=torch.bool, device=alpha.device)
        for j in range(self.k):
            live &= allowed > j
            if not live.any():
                break
            i_up, s_up, f_up = search_up.best(up & live[:, None])
            i_dn, s_dn, f_dn = search_dn.best(down & live[:, None])
            use_up = f_up & (~f_dn | (s_up >= s_dn))
            index = torch.where(use_up[:, None], i_up, i_dn)
            live &= f_up | f_dn
            valid = live[:, None].expand_as(index)
            picks.append(index)
            signs.append(torch.where(use_up, 1.0, -1.0)[:, None].expand_as(index).to(alpha.dtype))
            valids.append(valid)
            # Later selections of this iteration must not reuse the features just chosen.
            rows = torch.arange(alpha.shape[0], device=alpha.device)[:, None].expand_as(index)[valid]
            up[rows, index[valid]] = False
            down[rows, index[valid]] = False
        if not picks:
            empty = torch.zeros(alpha.shape[0], 0, dtype=torch.long, device=alpha.device)
            return empty, empty.to(alpha.dtype), empty.bool()
        return torch.cat(picks, 1), torch.cat(signs, 1), torch.cat(valids, 1)

    @property
    def _local(self) -> bool:
        """Whether the domain of an iteration is cut to the features under the wrong pixels."""
        return self.map == "jsma" and (self.region is None if self.local is None else self.local)

    @property
    def _pool_size(self) -> int:
        """Features of the pool that the ``k`` pair searches of one iteration share."""
        return max(_POOL, 4 * self.k, 2 * (self.candidates or 0))

    def _region_mask(self, x: Tensor, target: Tensor, clean: Tensor) -> Tensor:
        """The bool mask of changeable input features, shaped like ``x``."""
        if self.region is None:
            return torch.ones_like(x, dtype=torch.bool)
        region = self.region
        if not isinstance(region, Tensor):
            region = region(x, target, mask_from_output(clean))
            if not isinstance(region, Tensor):
                raise ValueError(f"region(x, target, prediction) must return a tensor, got {type(region).__name__}")
        batch, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        shape = tuple(region.shape)
        if shape == tuple(x.shape):
            mask = region
        elif shape == tuple(x.shape[1:]):
            mask = region.expand_as(x)
        elif shape == (batch, h, w) and x.dim() == 4:
            mask = region[:, None].expand_as(x)
        elif shape == (h, w) and x.dim() == 4:
            mask = region.expand_as(x)
        else:
            raise ValueError(
                f"region must be a mask of shape {tuple(x.shape)}, {tuple(x.shape[1:])}, "
                f"({batch}, {h}, {w}) or ({h}, {w}), got shape {shape}"
            )
        return mask.to(device=x.device, dtype=torch.bool)


class _Search:
    """The ``k`` best-pair searches of one iteration in one direction, on one gradient.

    :func:`~salmap.attacks.jsma.select_features` over all ``n`` features costs a few sorts
    of ``n`` values, ``2 k`` times an iteration. Instead the searches share a pool: the
    ``pool`` features of highest bound ``U_p = (a_p + max a) * (nb_p + max nb)`` (the
    orientation of :func:`select_features`, maxima over the domain), found once. ``U_p``
    bounds the score of every admissible pair through ``p``, and removing features from the
    domain only lowers the maxima, so it stays a bound for the whole iteration. A pair found
    in the pool is therefore the exact best over the domain when its score exceeds the
    largest bound left out of the pool; rows where that proof fails are searched again over
    all features. With ``candidates`` (an approximate search by definition) the pool is
    searched as :func:`select_features` would search the domain, without the proof (rows
    that find nothing in the pool are searched again over all features).
    """

    def __init__(
        self, alpha: Tensor, beta: Tensor, domain: Tensor, increase: bool, pairs: bool, chunk: int,
        candidates: int | None, pool: int,
    ) -> None:
        self.alpha, self.beta, self.increase, self.pairs = alpha, beta, increase, pairs
        self.chunk, self.candidates = chunk, candidates
        rows, n = alpha.shape
        self.index: Tensor | None = None
        if not pairs or pool >= n or not domain.any():
            return  # single features are one cheap pass; a small domain is searched as it is
        a, nb = (alpha, -beta) if increase else (-alpha, beta)
        neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
        a_up = a + torch.where(domain, a, neg_inf).amax(dim=1, keepdim=True)
        nb_up = nb + torch.where(domain, nb, neg_inf).amax(dim=1, keepdim=True)
        bound = torch.where(domain & (a_up > 0) & (nb_up > 0), a_up * nb_up, neg_inf)
        top = bound.topk(pool + 1, dim=1, sorted=True)
        # Ascending feature order in the pool keeps select_features' tie-breaking (lowest pair first).
        self.index = top.indices[:, :pool].sort(dim=1).values
        self.usable = torch.gather(bound, 1, self.index) > neg_inf
        self.left_out = top.values[:, pool]
        self.sub_alpha = torch.gather(alpha, 1, self.index)
        self.sub_beta = torch.gather(beta, 1, self.index)

    def best(self, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``select_features`` over ``domain`` (a subset of the domain the search started with)."""
        rows = domain.shape[0]
        if not domain.any():
            width = 2 if self.pairs else 1
            return (torch.zeros(rows, width, dtype=torch.long, device=domain.device),
                    torch.zeros(rows, dtype=self.alpha.dtype, device=domain.device),
                    torch.zeros(rows, dtype=torch.bool, device=domain.device))
        if self.index is None:
            return self._full(domain)
        sub_domain = torch.gather(domain, 1, self.index) & self.usable
        at, score, found = select_features(self.sub_alpha, self.sub_beta, sub_domain, self.increase, True,
                                           self.chunk, self.candidates)
        index = torch.gather(self.index, 1, at)
        nothing_left_out = self.left_out == -math.inf
        if self.candidates is not None:  # no proof to give, but a pool run dry is searched again
            settled = found | nothing_left_out
        else:
            settled = torch.where(found, score > self.left_out, nothing_left_out)
        if not settled.all():
            again = (~settled).nonzero().flatten()
            i, s, f = self._full(domain[again], again)
            index[again], score[again], found[again] = i, s, f
        return torch.where(found[:, None], index, 0), torch.where(found, score, 0.0), found

    def _full(self, domain: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        alpha = self.alpha if rows is None else self.alpha[rows]
        beta = self.beta if rows is None else self.beta[rows]
        return select_features(alpha, beta, domain, self.increase, self.pairs, self.chunk, self.candidates)


def _softmax(out: Tensor) -> Tensor:
    return torch.softmax(out, dim=1)


def _resize(mask: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """A ``(B, h, w)`` mask at the input's spatial ``size`` (nearest neighbour), as float."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return torch.nn.functional.interpolate(mask[:, None], size=tuple(size), mode="nearest")[:, 0]


# -- targets for common goals --------------------------------------------------------
def predict_masks(model: Model, x: Tensor, batch_size: int = 64) -> Tensor:
    """The model's class-index masks ``(B, H, W)`` for ``x`` (model frozen, then restored)."""
    with frozen(model):
        return mask_from_output(predict(model, x, batch_size))


def hide_object(
    mask: Tensor, object_mask: Tensor | None = None, classes: int | list[int] | None = None, background: int = 0
) -> Tensor:
    """Target that hides objects: their pixels become ``background``.

    Which pixels: ``object_mask`` (bool ``(B, H, W)``) when given, else the pixels of the
    given ``classes``, else every pixel that is not already background.

    Examples
    --------
    >>> hide_object(torch.tensor([[[0, 1], [2, 0]]]), classes=2)
    tensor([[[0, 1],
             [0, 0]]])
    """
    if object_mask is not None:
        if object_mask.shape != mask.shape:
            raise ValueError(f"object_mask must have the shape of mask {tuple(mask.shape)}, got {tuple(object_mask.shape)}")
        hide = object_mask.bool()
    elif classes is not None:
        wanted = torch.as_tensor([classes] if isinstance(classes, int) else list(classes), device=mask.device)
        hide = torch.isin(mask, wanted)
    else:
        hide = mask != background
    return torch.where(hide, torch.full_like(mask, background), mask)


def relabel_class(mask: Tensor, source: int | Tensor, target: int | Tensor) -> Tensor:
    """Target in which the pixels of class ``source`` become class ``target`` (ints, or ``(B,)`` per image).

    Examples
    --------
    >>> relabel_class(torch.tensor([[[0, 3], [3, 1]]]), 3, 5)
    tensor([[[0, 5],
             [5, 1]]])
    """
    src = torch.as_tensor(source, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    dst = torch.as_tensor(target, device=mask.device).reshape(-1, *([1] * (mask.dim() - 1)))
    return torch.where(mask == src, dst.to(mask.dtype).expand_as(mask), mask)


def add_mask_of(mask: Tensor, other: Tensor, background: int = 0) -> Tensor:
    """Target that adds the objects of another image's mask: ``other`` wherever it is not background.

    Examples
    --------
    >>> add_mask_of(torch.tensor([[[1, 0], [0, 0]]]), torch.tensor([[[0, 0], [2, 0]]]))
    tensor([[[1, 0],
             [2, 0]]])
    """
    if other.shape != mask.shape:
        raise ValueError(f"other must have the shape of mask {tuple(mask.shape)}, got {tuple(other.shape)}")
    return torch.where(other != background, other, mask)


def outside(prediction_classes: int | None = None, background: int = 0) -> RegionFn:
    """A ``region`` callable: only input pixels outside the objects of the clean prediction may change.

    With ``prediction_classes`` only that class counts as the object. Needs output and input
    of one spatial size (the prediction is resized to the input's otherwise).
    """

    def region(x: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        obj = prediction != background if prediction_classes is None else prediction == prediction_classes
        return _resize(~obj, x.shape[-2:]).bool()

    return region
