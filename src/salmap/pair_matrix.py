"""The greedy pair selections of one gradient as arg-maxes over one pair-score matrix.

The batched alternative to :class:`salmap.pair_pool.PairPool` for an accelerator, where each
of segmentation JSMA's ``k`` selections per iteration would otherwise cost several host
synchronisations and hundreds of small kernels: :class:`PairMatrix` scores every pair of a
pool of features once, in both directions, and each selection is one arg-max and two writes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from salmap.pair_pool import left_out_bounds, pool_of
from salmap.pair_search import pair_bound

__all__ = ["PairMatrix", "Selections"]


class Selections(NamedTuple):
    """What :meth:`PairMatrix.select` returns, per row ``(B, k, ...)``."""

    #: Long ``(B, k, 2)``: the pair of each selection, ``p < q``.
    features: Tensor
    #: Bool ``(B, k)``: the selection increases its features (direction 0), else decreases them.
    increase: Tensor
    #: Bool ``(B, k)``: the real selections (a prefix of each row).
    valid: Tensor
    #: Long ``(B,)``: the first selection that is not proven to be the best over the whole
    #: domain (see :meth:`PairMatrix.select`), ``k`` where every one is; the selections from
    #: there on are not valid and must come from another search.
    first_unproven: Tensor


class PairMatrix:
    """Every pair score of a pool of features in two directions, for greedy selections that never wait on the host.

    The pool holds ``pool`` features, in ascending order: the best of each direction by
    :func:`~salmap.pair_search.pair_bound`, taken in turn (the first of either direction, then
    the second, ...; every feature when ``pool >= n``).
    Its pair scores, the arithmetic of :func:`~salmap.pair_search.select_features`'
    exhaustive search, are one ``(B, 2, pool, pool)`` matrix (``-inf`` where a pair is not
    admissible, and below the diagonal). A selection is one arg-max over each row of it,
    whose first maximum gives :func:`salmap.attacks.seg_saliency.choose`'s tie-breaking
    (direction 0 first, then the lowest pair), and its features leave both directions by
    writing ``-inf`` into their rows and columns (``O(pool)`` per selection). No step reads a
    value back to the host. Memory: ``2 B pool**2`` scores.

    Parameters
    ----------
    a, nb:
        Float ``(B, 2, n)``: each direction's ``a`` and ``nb`` in the orientation of
        :func:`~salmap.pair_search.select_features` (admissible: both sums positive).
    domain:
        Bool ``(B, 2, n)``: the features each direction may change.
    pool:
        Features in the pool.
    exact:
        Prove each selection the best over the whole domain (see :meth:`select`), which costs
        :func:`~salmap.pair_pool.left_out_bounds` once; otherwise only a pool that ran dry while
        features were left out of it counts as unproven.
    """

    def __init__(self, a: Tensor, nb: Tensor, domain: Tensor, pool: int, exact: bool) -> None:
        rows, _, n = a.shape
        neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
        bound = pair_bound(a.flatten(0, 1), nb.flatten(0, 1), domain.flatten(0, 1)).view(rows, 2, n)
        if pool >= n:
            self.index = torch.arange(n, device=a.device).expand(rows, n)
            self.left_out = neg_inf.expand(rows)
        else:
            # each direction's features of highest bound in turn (by rank): the direction of larger
            # scores must not fill the pool alone, since the greedy selections turn to the other
            order = bound.argsort(dim=2, descending=True)
            rank = torch.empty_like(order).scatter_(2, order, torch.arange(n, device=a.device).expand_as(order))
            self.index, _ = pool_of(-rank.amin(dim=1), pool)
            self.left_out = bound.amax(dim=1).scatter_(1, self.index, -math.inf).amax(dim=1)
        size = self.index.shape[1]
        at = self.index[:, None, :].expand(rows, 2, size)
        usable = torch.gather(bound, 2, at) > neg_inf
        sub_a, sub_nb = torch.gather(a, 2, at), torch.gather(nb, 2, at)
        upper = torch.ones(size, size, dtype=torch.bool, device=a.device).triu(1)
        self.scores = torch.empty(rows, 2, size, size, dtype=a.dtype, device=a.device)
        for d in range(2):  # one direction at a time: the temporaries of one
            s_a = sub_a[:, d, :, None] + sub_a[:, d, None, :]
            s_b = sub_nb[:, d, :, None] + sub_nb[:, d, None, :]
            ok = (s_a > 0) & (s_b > 0) & usable[:, d, :, None] & usable[:, d, None, :] & upper
            torch.mul(s_a, s_b, out=self.scores[:, d]).masked_fill_(~ok, -math.inf)
        self.size, self.neg_inf = size, neg_inf
        self.partner: Tensor | None = None
        if exact and pool < n:
            partner, among = left_out_bounds(a.flatten(0, 1), nb.flatten(0, 1), domain.flatten(0, 1),
                                             at.flatten(0, 1))
            self.partner = torch.where(usable, partner.view(rows, 2, size), 0.0)
            self.among = among.view(rows, 2)

    def select(self, k: int, allowed: Tensor) -> Selections:
        """``k`` greedy selections per row, at most ``allowed`` ``(B,)`` of them valid; consumes the matrix.

        Each selection is the best remaining pair of the pool in either direction. It is
        *proven* when nothing through a feature left out of the pool can beat it: with
        ``exact``, its score exceeds every such pair's (the largest pair bound left out, or
        :func:`~salmap.pair_pool.left_out_bounds` over the pool features still there; strict,
        so that ties go to the exhaustive search, which breaks them), or, where the pool has
        nothing left, no admissible pair goes through a left-out feature; without ``exact``,
        unless the pool ran dry while features were left out.
        """
        rows, size = self.scores.shape[0], self.size
        flat = self.scores.view(rows, -1)
        row = torch.arange(rows, device=flat.device)[:, None]
        split = torch.tensor([size, 1], device=flat.device)
        values, picks = [], []
        for _ in range(k):
            value, at = flat.max(dim=1)  # first maximum: direction 0, then the lowest pair
            values.append(value)
            picks.append(at)
            pair = at[:, None].div(split, rounding_mode="floor").remainder_(size)  # (p, q) in the pool
            # A row that stopped never selects again, so removing its (meaningless) pick is harmless.
            self.scores[row, :, pair, :] = self.neg_inf
            self.scores[row, :, :, pair] = self.neg_inf
        value, at = torch.stack(values, dim=1), torch.stack(picks, dim=1)
        within = at.remainder(size * size)
        pairs = torch.stack([within.div(size, rounding_mode="floor"), within.remainder(size)], dim=2)
        features = torch.gather(self.index, 1, pairs.flatten(1)).view(rows, k, 2)
        found = value > self.neg_inf
        steps = torch.arange(k, device=flat.device)
        going = steps < allowed[:, None]
        live = (found & going).cumprod(dim=1).bool()
        wanted = going & torch.cat([torch.ones_like(live[:, :1]), live[:, :-1]], dim=1)
        if self.partner is None:
            proven = found | (self.left_out == -math.inf)[:, None]
        else:
            proven = torch.where(found, value > (limit := self._limit(pairs, steps)), limit <= 0)
        unproven = wanted & ~proven
        first = (unproven.cumsum(dim=1) == 0).sum(dim=1)
        return Selections(features, at < size * size, live & (steps < first[:, None]), first)

    def _limit(self, pairs: Tensor, steps: Tensor) -> Tensor:
        """``(B, k)``: the bound on every pair through a left-out feature at each selection, both directions."""
        assert self.partner is not None
        rows, k = pairs.shape[:2]
        # the selection at which each pool feature leaves (k: it stays)
        leaves = torch.full((rows, self.size), k, dtype=torch.long, device=pairs.device).scatter_reduce_(
            1, pairs.flatten(1), steps.repeat_interleave(2).expand(rows, 2 * k), "amin")
        # the largest partner bound of the features leaving at each selection, then of those still there
        at_step = torch.zeros(rows, 2, k + 1, dtype=self.partner.dtype, device=pairs.device).scatter_reduce_(
            2, leaves[:, None, :].expand(rows, 2, self.size), self.partner, "amax")
        still = at_step.flip(2).cummax(dim=2).values.flip(2)[:, :, :k]
        dynamic = torch.maximum(still, self.among[:, :, None])
        return torch.minimum(self.left_out[:, None, None], dynamic).amax(dim=1)
