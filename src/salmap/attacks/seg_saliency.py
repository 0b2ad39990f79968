"""The saliency maps of the segmentation JSMA (:class:`salmap.attacks.SegmentationJSMA`).

Two saliency maps:

``map="jsma"`` (default)
    JSMA's map (Papernot et al. 2016) applied to pixel sums. Only the pixels ``M`` that
    do not yet match the target count. ``alpha`` is the gradient of the summed
    target-class scores over ``M``, ``beta`` the gradient of the summed scores of the
    other classes over ``M``; both come from one forward pass and two vector-Jacobian
    products (:func:`salmap.gradients.output_vjps`). Pairs (or single features) are
    chosen by :func:`salmap.pair_search.select_features`, for an increase and for a
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

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from salmap.attacks.seg_goals import resize_mask
from salmap.gradients import Model, forward, output_vjps, softmax_classes
from salmap.pair_matrix import PairMatrix
from salmap.pair_pool import PairPool
from salmap.pair_search import AUTO_BLOCK_ELEMENTS, auto_chunk_size

__all__ = ["DEVICE_POOL", "choose", "derivatives", "output_mask"]

#: Smallest pool of the batched selections (:func:`choose_on_device`): its cost on a GPU hardly
#: grows with the pool, and a larger pool proves more selections exact.
DEVICE_POOL = 2048
#: Most pair scores per direction of one batched matrix: rows beyond go in groups.
_DEVICE_SCORES = 4 * AUTO_BLOCK_ELEMENTS


def output_mask(out: Tensor, transformed: bool) -> Tensor:
    """Class-index masks of outputs; ``transformed``: binary outputs are sigmoids (threshold 0.5), not logits."""
    if out.shape[1] == 1:
        return (out[:, 0] > (0.5 if transformed else 0.0)).long()
    return out.argmax(dim=1)


def derivatives(
    model: Model, x: Tensor, target: Tensor, map: str = "jsma", probabilities: bool = False,
    channels: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The forward derivative the map reads: ``(outputs, alpha, beta)``.

    ``map="jsma"``: ``alpha`` is the gradient of the summed target-class scores over
    the pixels whose prediction differs from ``target``, ``beta`` that of the summed
    scores of all other classes over the same pixels (binary: ``beta = -alpha``).
    ``map="masked"``: ``alpha`` is the masked element-wise gradient of the starting
    method and ``beta`` is None. ``outputs`` are the model's outputs after the
    transform the map uses (none, sigmoid or softmax); ``alpha`` and ``beta`` are
    shaped like ``x``. The model is used as it is (wrap calls in
    :func:`salmap.gradients.frozen`). ``map`` and ``probabilities`` are those of
    :class:`~salmap.attacks.SegmentationJSMA`. ``channels``, the model's output channels, saves
    a probing forward pass when known.
    """
    transformed = map == "masked" or probabilities

    def not_matching(out: Tensor) -> Tensor:
        return (output_mask(out, transformed) != target).to(out.dtype)

    def onehot(out: Tensor) -> Tensor:  # scatter, not one_hot, which reads the classes back to check them
        return torch.zeros_like(out).scatter_(1, target[:, None], 1.0)

    if channels is None:
        with torch.no_grad():
            channels = int(forward(model, x[:1]).shape[1])
    binary = channels == 1
    transform: Callable[[Tensor], Tensor] | None = None
    if transformed:
        transform = torch.sigmoid if binary else softmax_classes
    if map == "masked":
        # One backward pass with a ones-like grad_outputs on the (sigmoid) output.
        out, (grad,) = output_vjps(model, x, [torch.ones_like if binary else onehot], transform)
        keep = target == 1 if binary else target != 0
        return out, grad * resize_mask(keep, x.shape[-2:])[:, None].to(grad.dtype), None
    if binary:
        # Class 1 scores the logit (or the sigmoid), class 0 its negative (or 1 - sigmoid).
        sign = (2 * target - 1)[:, None]
        out, (alpha,) = output_vjps(
            model, x, [lambda o: sign.to(o.dtype) * not_matching(o)[:, None]], transform
        )
        return out, alpha, -alpha
    out, (alpha, total) = output_vjps(
        model, x,
        [lambda o: onehot(o) * not_matching(o)[:, None], lambda o: not_matching(o)[:, None].expand_as(o)],
        transform,
    )
    return out, alpha, total - alpha


def choose(
    alpha: Tensor, beta: Tensor | None, flat: Tensor, domain: Tensor, allowed: Tensor, *, theta: float,
    bounds: tuple[Any, Any], k: int, pairs: bool, chunk_size: int | None, candidates: int | None, pool: int,
    batched: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``allowed`` (at most ``k``) selections per row from one gradient.

    ``alpha`` and ``beta`` ``(R, n)`` are the map's derivatives (``beta`` None for the masked
    map), ``flat`` the current inputs ``(R, n)``, ``domain`` the features that may change;
    ``pool`` is the size of the :class:`~salmap.pair_pool.PairPool` the pair searches share.
    Returns feature indices ``(R, m)``, the sign of each change ``(R, m)`` and which entries
    are real selections ``(R, m)`` (a pair counts as two entries). ``bounds`` are floats or the
    features' ``(1, n)`` bounds (:meth:`salmap._validate.Bounds.features`).

    Two ways to the pairs: on CUDA (``batched=None``; ``batched=True`` forces it, ``False``
    rules it out) the ``k`` pair selections are arg-maxes over one
    :class:`~salmap.pair_matrix.PairMatrix` of a pool of at least :data:`DEVICE_POOL` features
    (:func:`choose_on_device`: no host sync per selection) when ``chunk_size`` is None and one
    row's matrix fits in ``8 * 2**24`` scores (rows are taken in groups that fit); elsewhere
    one :class:`~salmap.pair_pool.PairPool` search per selection. The exact search
    (``candidates=None``) picks the same pairs either way: from the first batched selection
    that the pool cannot prove exact, a row continues with the pool searches. With
    ``candidates`` both ways are approximate and may pick different pairs: the matrix
    searches its whole pool (``max(pool, DEVICE_POOL)`` features, each direction's best by
    :func:`~salmap.pair_search.pair_bound` in turn; ``pool >= 2 * candidates``) exactly, the
    pool searches only the ``candidates`` most promising features of their pools (``pool``
    features per direction of highest :func:`~salmap.pair_search.pair_bound`); a
    row continues with the pool searches only where the matrix's pool ran dry while features
    were left out of it.
    """
    low, high = bounds
    up = domain & (flat < high)
    if beta is None:
        # The starting method: the most salient features (positive masked gradient) go up.
        score = torch.where(up & (alpha > 0), alpha, torch.full_like(alpha, -math.inf))
        top, index = torch.sort(score, dim=1, descending=True, stable=True)
        m = min(k, index.shape[1])
        valid = (top[:, :m] > -math.inf) & (torch.arange(m, device=flat.device) < allowed[:, None])
        return index[:, :m], torch.ones_like(top[:, :m]), valid
    down = domain & (flat > low)
    # The saliency of a change is its first-order effect on the scores: the gradient times
    # the step the feature can actually take (theta, cut short by the bounds).
    step_up = torch.clamp(flat + theta, max=high) - flat
    step_dn = flat - torch.clamp(flat - theta, min=low)
    a_up, b_up, a_dn, b_dn = alpha * step_up, beta * step_up, alpha * step_dn, beta * step_dn
    rows, n = alpha.shape
    size = min(max(pool, DEVICE_POOL), n)
    on_device = alpha.is_cuda if batched is None else batched
    if on_device and pairs and chunk_size is None and size * size <= _DEVICE_SCORES:
        chosen, sign, valid, first = choose_on_device(
            a_up, b_up, up, a_dn, b_dn, down, allowed, k, size, exact=candidates is None)
        again = (first < k).nonzero().flatten()  # the one host sync of the selections
        if again.numel():  # from the first unproven selection on, the pool searches below
            _continue(again, first[again], (chosen, sign, valid), alpha, beta, flat, domain, allowed, theta=theta,
                      bounds=bounds, k=k, candidates=candidates, pool=pool)
        return chosen, sign, valid
    if not bool((allowed > 0).all()):  # rows that choose nothing cost the searches nothing
        return _rows_choosing(alpha, beta, flat, domain, allowed, theta=theta, bounds=bounds, k=k, pairs=pairs,
                              chunk_size=chunk_size, candidates=candidates, pool=pool)
    chunk = chunk_size or auto_chunk_size(*alpha.shape)
    search_up = PairPool(a_up, b_up, up, True, pairs, chunk, candidates, pool)
    search_dn = PairPool(a_dn, b_dn, down, False, pairs, chunk, candidates, pool)
    picks, signs, valids = [], [], []
    live = torch.ones(rows, dtype=torch.bool, device=alpha.device)
    for j in range(k):
        live = live & (allowed > j)  # a new tensor: the valid masks of earlier selections are views of live
        if not live.any():
            break
        i_up, s_up, f_up = search_up.best(up & live[:, None])
        i_dn, s_dn, f_dn = search_dn.best(down & live[:, None])
        use_up = f_up & (~f_dn | (s_up >= s_dn))
        index = torch.where(use_up[:, None], i_up, i_dn)
        live = live & (f_up | f_dn)
        valid = live[:, None].expand_as(index)
        picks.append(index)
        signs.append(torch.where(use_up, 1.0, -1.0)[:, None].expand_as(index).to(alpha.dtype))
        valids.append(valid)
        # Later selections of this iteration must not reuse the features just chosen.
        at = torch.arange(rows, device=alpha.device)[:, None].expand_as(index)[valid]
        up[at, index[valid]] = False
        down[at, index[valid]] = False
    if not picks:
        empty = torch.zeros(rows, 0, dtype=torch.long, device=alpha.device)
        return empty, empty.to(alpha.dtype), empty.bool()
    return torch.cat(picks, 1), torch.cat(signs, 1), torch.cat(valids, 1)


def choose_on_device(
    a_up: Tensor, b_up: Tensor, up: Tensor, a_dn: Tensor, b_dn: Tensor, down: Tensor, allowed: Tensor, k: int,
    pool: int, exact: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``k`` greedy pair selections of :func:`choose` with no host sync: one
    :class:`~salmap.pair_matrix.PairMatrix` of both directions, ``k`` arg-maxes.

    Returns ``(features, signs, valid)`` shaped ``(R, 2 k)`` and ``first`` ``(R,)``: the first
    selection of each row that the pool could not prove (:meth:`~salmap.pair_matrix.PairMatrix.select`;
    ``k`` where none); the selections from there on are not valid, and only there may
    :func:`choose`'s pool searches differ. Rows go through matrices of at most
    ``_DEVICE_SCORES`` scores together.
    """
    rows = a_up.shape[0]
    a, nb, domain = torch.stack([a_up, -a_dn], 1), torch.stack([-b_up, b_dn], 1), torch.stack([up, down], 1)
    group = max(1, _DEVICE_SCORES // (pool * pool))
    parts = []
    for start in range(0, rows, group):
        part = slice(start, start + group)
        parts.append(PairMatrix(a[part], nb[part], domain[part], pool, exact).select(k, allowed[part]))
    features, increase, valid, first = (torch.cat(p, 0) for p in zip(*parts, strict=True))
    sign = torch.where(increase, 1.0, -1.0).to(a_up.dtype)[:, :, None].expand(rows, k, 2)
    # repeat_interleave, not expand + flatten: with k = 1 the flattened expansion is a view whose
    # elements share memory, and the caller's in-place updates of ``valid`` must not see that
    return features.flatten(1), sign.flatten(1), valid.repeat_interleave(2, dim=1), first


def _continue(
    again: Tensor, start: Tensor, out: tuple[Tensor, Tensor, Tensor], alpha: Tensor, beta: Tensor, flat: Tensor,
    domain: Tensor, allowed: Tensor, **search: Any,
) -> None:
    """Selections ``start`` ``(A,)`` onwards of the rows ``again`` by the pool searches, written into ``out``
    (``choose_on_device``'s selections, valid before ``start``)."""
    chosen, sign, valid = out
    n, width = alpha.shape[1], chosen.shape[1]
    done = torch.zeros(again.numel(), n + 1, dtype=torch.bool, device=alpha.device)
    done.scatter_(1, torch.where(valid[again], chosen[again], n), True)  # the features chosen before start
    sub = choose(alpha[again], beta[again], flat[again], domain[again] & ~done[:, :n], allowed[again] - start,
                 pairs=True, chunk_size=auto_chunk_size(again.numel(), n), **search)
    # the new selections' columns follow start's; those of invalid entries fall into a spare column
    column = 2 * start[:, None] + torch.arange(sub[0].shape[1], device=alpha.device)
    column = torch.where(sub[2], column, width)
    for tensor, new in zip(out, sub, strict=True):
        rows = torch.cat([tensor[again], new[:, :1]], dim=1)
        tensor[again] = rows.scatter_(1, column, new)[:, :width]


def _rows_choosing(
    alpha: Tensor, beta: Tensor, flat: Tensor, domain: Tensor, allowed: Tensor, **search: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`choose`'s pool searches over only the rows with ``allowed > 0``, the others' entries invalid."""
    some = (allowed > 0).nonzero().flatten()
    rows = alpha.shape[0]
    if some.numel() == 0:
        empty = torch.zeros(rows, 0, dtype=torch.long, device=alpha.device)
        return empty, empty.to(alpha.dtype), empty.bool()
    sub = choose(alpha[some], beta[some], flat[some], domain[some], allowed[some], batched=False, **search)
    out = tuple(torch.zeros((rows, *part.shape[1:]), dtype=part.dtype, device=part.device) for part in sub)
    for whole, part in zip(out, sub, strict=True):
        whole[some] = part
    return out  # type: ignore[return-value]
