"""A pool of promising features shared by several exact pair searches on one gradient.

Segmentation JSMA (:class:`salmap.attacks.SegmentationJSMA`) makes ``k`` selections per
iteration from one gradient, each removing the features just chosen; :class:`PairPool`
lets those searches share the work of :func:`salmap.pair_search.select_features` and stay
exact, and :func:`left_out_bounds` proves, for it and for the batched selections of
:class:`salmap.pair_matrix.PairMatrix`, that no pair through a feature left out of the pool
can do better.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salmap.pair_search import pair_bound, select_features

__all__ = ["PairPool", "left_out_bounds", "pool_of"]

#: Points of the left-out features' Pareto front that :func:`left_out_bounds` keeps exactly.
_FRONT_POINTS = 128
#: Left-out features of highest ``a`` and of highest ``nb`` in which :func:`left_out_bounds` looks for that front.
_FRONT_SEARCH = 1024


def pool_of(bound: Tensor, pool: int) -> tuple[Tensor, Tensor]:
    """The ``pool`` features of highest ``bound`` per row, in ascending feature order (which keeps
    :func:`select_features`' tie-breaking, lowest pair first), and the largest bound left out
    (``-inf`` where none is)."""
    top = bound.topk(pool + 1, dim=1, sorted=True)
    return top.indices[:, :pool].sort(dim=1).values, top.values[:, pool]


def left_out_bounds(a: Tensor, nb: Tensor, domain: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds on the admissible pairs through the features of ``domain`` left out of a pool.

    In the orientation of :func:`select_features` (``a`` and ``nb`` ``(B, n)``, admissible:
    both sums positive, score their product), for the pool ``index`` ``(B, P)``, returns
    ``partner`` ``(B, P)``: at least the score of every admissible pair of pool feature
    ``index[:, i]`` with a left-out feature, and ``among`` ``(B,)``: at least the score of
    every admissible pair of two left-out features (which a pair of one feature with itself
    may stand for). The best pair through a left-out feature
    of any later domain (a subset of ``domain``) scores at most the larger of ``among`` and
    the largest ``partner`` of the pool features still in it: unlike :func:`pair_bound` this
    follows the domain as the pool's best features leave it. ``0`` means no admissible pair.

    Every left-out feature is dominated (lower or equal ``a`` and ``nb``) by one of a few
    points, and scores grow with ``a`` and ``nb`` where positive (rounding too), so pairs with
    those points bound the pairs with the features they dominate: :data:`_FRONT_POINTS`
    points spread along the left-out features' Pareto front (looked for among the
    :data:`_FRONT_SEARCH` of highest ``a`` and of highest ``nb``), the corners of the
    staircase between consecutive ones, and one corner for the features beyond the search.
    """
    rows, n = a.shape
    neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
    # only features with an admissible pair somewhere (pair_bound > -inf) count: it trims the front's ends
    out = (pair_bound(a, nb, domain) > neg_inf).scatter_(1, index, False)
    a_out, nb_out = torch.where(out, a, neg_inf), torch.where(out, nb, neg_inf)
    search = min(n - 1, _FRONT_SEARCH)
    by_a, by_nb = a_out.topk(search + 1, dim=1), nb_out.topk(search + 1, dim=1)
    seen = torch.cat([by_a.indices[:, :search], by_nb.indices[:, :search]], dim=1)
    # the front of the features seen: by a descending, where nb beats every nb before
    seen_a = torch.gather(a_out, 1, seen)
    order = seen_a.argsort(dim=1, descending=True)
    seen_a, seen_nb = torch.gather(seen_a, 1, order), torch.gather(torch.gather(nb_out, 1, seen), 1, order)
    before = torch.cat([neg_inf.expand(rows, 1), seen_nb.cummax(dim=1).values[:, :-1]], dim=1)
    front = seen_nb > before
    rank = front.cumsum(dim=1)
    size = rank[:, -1:]
    # the front points of ranks 1, ..., size spread evenly (the first and the last among them)
    step = torch.arange(_FRONT_POINTS, device=a.device)
    wanted = 1 + torch.div(step * (size - 1).clamp(min=0), _FRONT_POINTS - 1, rounding_mode="floor")
    at = torch.searchsorted(rank, wanted).clamp_(max=seen_a.shape[1] - 1)
    real = size > 0
    point_a = torch.where(real, torch.gather(seen_a, 1, at), neg_inf)
    point_nb = torch.where(real, torch.gather(seen_nb, 1, at), neg_inf)
    # between two kept points that are not neighbours the front stays below the first's a and the second's nb
    gap = wanted[:, 1:] - wanted[:, :-1] > 1
    corners_a, corners_nb = torch.where(gap, point_a[:, :-1], neg_inf), torch.where(gap, point_nb[:, 1:], neg_inf)
    # the features seen by neither search: below the first a and nb left out of them
    point_a = torch.cat([point_a, corners_a, by_a.values[:, search:]], dim=1)
    point_nb = torch.cat([point_nb, corners_nb, by_nb.values[:, search:]], dim=1)
    pool_a, pool_nb = torch.gather(a, 1, index), torch.gather(nb, 1, index)
    partner = _pair_scores(pool_a, pool_nb, point_a, point_nb).amax(dim=2)
    # two left-out features: one seen, the other below a point; or both below the last corner
    among = _pair_scores(seen_a, seen_nb, point_a, point_nb).flatten(1).amax(dim=1)
    among = torch.maximum(among, _pair_scores(point_a[:, -1:], point_nb[:, -1:], point_a[:, -1:], point_nb[:, -1:])[:, 0, 0])
    return partner, among


def _pair_scores(a: Tensor, nb: Tensor, other_a: Tensor, other_nb: Tensor) -> Tensor:
    """``max(a_p + a_q, 0) * max(nb_p + nb_q, 0)`` for every ``p`` of ``a`` ``(B, m)`` and ``q`` of
    ``other_a`` ``(B, m')``: ``(B, m, m')``, at least the score of the pair where admissible."""
    sum_a = (a[:, :, None] + other_a[:, None, :]).clamp_(min=0)
    return sum_a.mul_((nb[:, :, None] + other_nb[:, None, :]).clamp_(min=0))


class PairPool:
    """Several best-pair searches over shrinking subsets of one domain, on one gradient.

    :func:`select_features` over all ``n`` features costs a few sorts of ``n`` values per
    call; a caller that searches the same ``alpha``/``beta`` many times (the ``k`` selections
    of one segmentation-JSMA iteration, each removing the features just chosen) shares a pool
    instead: the ``pool`` features of highest bound :func:`pair_bound`, found once. A pair
    found in the pool is the exact best over the domain when its score exceeds every pair
    through a feature left out of the pool: the largest bound left out, or, where that fails,
    the tighter bound of :func:`left_out_bounds` (computed once), which follows the domain as
    the pool's best features leave it.
    Rows where that proof fails are searched again over all features. With ``candidates`` (an
    approximate search by definition) the pool is searched as :func:`select_features` would
    search the domain, without the proof (rows that find nothing in the pool while features
    were left out of it are searched again over all features).

    Parameters
    ----------
    alpha, beta, domain, increase, pairs, candidates:
        As for :func:`select_features` (``domain`` is the largest domain later calls use).
    chunk: ``chunk_size`` of :func:`select_features`.
    pool: features in the shared pool; a domain of at most ``pool`` features is searched as it is.
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
        bound = pair_bound(a, nb, domain)
        self.index, self.left_out = pool_of(bound, pool)
        self.usable = torch.gather(bound, 1, self.index) > neg_inf
        self.sub_alpha = torch.gather(alpha, 1, self.index)
        self.sub_beta = torch.gather(beta, 1, self.index)
        self.a, self.nb, self.domain = a, nb, domain
        self.bounds: tuple[Tensor, Tensor] | None = None  # left_out_bounds, once the largest bound left out fails

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
        if self.candidates is not None:  # no proof to give, but a pool run dry is searched again
            settled = found | (self.left_out == -math.inf)
        else:
            settled = torch.where(found, score > self.left_out, self.left_out == -math.inf)
            if not settled.all():  # the tighter bound, computed once, where the cheap one fails
                if self.bounds is None:
                    self.bounds = left_out_bounds(self.a, self.nb, self.domain, self.index)
                partner, among = self.bounds
                limit = torch.maximum(torch.where(sub_domain, partner, 0.0).amax(dim=1), among)
                settled |= torch.where(found, score > limit, limit <= 0)
        if not settled.all():
            again = (~settled).nonzero().flatten()
            i, s, f = self._full(domain[again], again)
            index[again], score[again], found[again] = i, s, f
        return torch.where(found[:, None], index, 0), torch.where(found, score, 0.0), found

    def _full(self, domain: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        alpha = self.alpha if rows is None else self.alpha[rows]
        beta = self.beta if rows is None else self.beta[rows]
        return select_features(alpha, beta, domain, self.increase, self.pairs, self.chunk, self.candidates)
