"""A pool of promising features shared by several exact pair searches on one gradient.

Segmentation JSMA (:class:`salmap.attacks.SegmentationJSMA`) makes ``k`` selections per
iteration from one gradient, each removing the features just chosen; :class:`PairPool`
lets those searches share the work of :func:`salmap.pair_search.select_features` and stay exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salmap.pair_search import pair_bound, select_features

__all__ = ["PairMatrix", "PairPool"]


class PairPool:
    """Several best-pair searches over shrinking subsets of one domain, on one gradient.

    :func:`select_features` over all ``n`` features costs a few sorts of ``n`` values per
    call; a caller that searches the same ``alpha``/``beta`` many times (the ``k`` selections
    of one segmentation-JSMA iteration, each removing the features just chosen) shares a pool
    instead: the ``pool`` features of highest bound :func:`pair_bound`, found once. That bound
    stays valid while features leave the domain, so a pair found in the pool is the exact
    best over the domain when its score exceeds the largest bound left out of the pool; rows
    where that proof fails are searched again over all features. With ``candidates`` (an
    approximate search by definition) the pool is searched as :func:`select_features` would
    search the domain, without the proof (rows that find nothing in the pool are searched
    again over all features).

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


class PairMatrix:
    """Every pair score of a pool of features, for greedy selections that never wait on the host.

    The alternative to :class:`PairPool` for an accelerator: the pool (the same ``pool``
    features of highest :func:`pair_bound` as :class:`PairPool`, or all features when there
    are no more) is scored once as a ``(rows, pool, pool)`` matrix, each selection is one
    arg-max over it, and a chosen feature leaves by masking its row and column. No step reads
    a value back to the host. :meth:`best` gives the exact best pair of the pool's remaining
    domain, with :func:`select_features`' tie-breaking (lowest pair), and whether that is
    *settled*, the exact best over the whole remaining domain by :class:`PairPool`'s proof
    (its score beats every bound left out of the pool). Memory: ``rows * pool**2`` scores.

    Parameters
    ----------
    alpha, beta, domain, increase: as for :func:`select_features` (``domain`` is the largest
        domain the selections use).
    pool: features in the pool.
    """

    def __init__(self, alpha: Tensor, beta: Tensor, domain: Tensor, increase: bool, pool: int) -> None:
        rows, n = alpha.shape
        a, nb = (alpha, -beta) if increase else (-alpha, beta)
        neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
        if pool >= n:
            self.index = torch.arange(n, device=a.device).expand(rows, n)
            usable = domain
            self.left_out = neg_inf.expand(rows)
        else:
            bound = pair_bound(a, nb, domain)
            top = bound.topk(pool + 1, dim=1, sorted=True)
            # Ascending feature order keeps select_features' tie-breaking (lowest pair first).
            self.index = top.indices[:, :pool].sort(dim=1).values
            usable = torch.gather(bound, 1, self.index) > neg_inf
            self.left_out = top.values[:, pool]
        size = self.index.shape[1]
        sub_a, sub_nb = torch.gather(a, 1, self.index), torch.gather(nb, 1, self.index)
        # The arithmetic of select_features' exhaustive search: (a_p + a_q) * (nb_p + nb_q), p < q.
        s_a = sub_a[:, :, None] + sub_a[:, None, :]
        s_b = sub_nb[:, :, None] + sub_nb[:, None, :]
        ok = (s_a > 0) & (s_b > 0) & usable[:, :, None] & usable[:, None, :]
        ok &= torch.ones(size, size, dtype=torch.bool, device=a.device).triu(1)
        self.scores = s_a.mul_(s_b).masked_fill_(~ok, -math.inf)
        self.size = size

    def best(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(features (rows, 2), score, found, settled)`` of the best remaining pair per row
        (features and score 0 where none is found)."""
        rows = self.scores.shape[0]
        value, flat = self.scores.view(rows, -1).max(dim=1)  # first maximum: the lowest pair
        found = value > -math.inf
        at = torch.stack([flat // self.size, flat % self.size], dim=1)
        features = torch.where(found[:, None], torch.gather(self.index, 1, at), 0)
        settled = torch.where(found, value > self.left_out, self.left_out == -math.inf)
        return features, torch.where(found, value, 0.0), found, settled

    def remove(self, features: Tensor) -> None:
        """Take ``features`` ``(rows, m)`` out of every pair of their row."""
        gone = (self.index[:, :, None] == features[:, None, :]).any(dim=2)
        self.scores.masked_fill_(gone[:, :, None] | gone[:, None, :], -math.inf)
