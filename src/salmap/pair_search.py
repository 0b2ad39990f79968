"""JSMA's exact pair search: the admissible feature pair of highest saliency, per row.

Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", 2016
(Algorithm 3 and equations 8-9). Both JSMAs use it: :class:`salmap.attacks.JSMA` once per
iteration, :class:`salmap.attacks.SegmentationJSMA` ``k`` times per iteration through a
shared :class:`salmap.pair_pool.PairPool`.

The search (:func:`select_features`) is vectorised over the batch and exact by default. It
never materialises the ``n x n`` pair matrix: every feature ``p`` gets an upper bound
``U_p`` on the score of any pair containing it (its exact best, found among the
Pareto-optimal partners, or a cruder bound), the search runs over the features of highest
bound (in blocks of rows), and it widens the set until the bound of the first feature left
out is below the best pair found, which proves the pair optimal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from salmap._validate import check_number

__all__ = ["AUTO_BLOCK_ELEMENTS", "auto_chunk_size", "pair_bound", "select_features"]

#: Number of candidate features the exact pair search starts with before widening.
_FIRST_CANDIDATES = 16
#: Largest set of best-partner features for which the exact row maxima bound the search.
_MAX_FRONTIER = 4096
#: Pair scores one block of the pair search may hold (about 10 bytes each in flight)
#: when the attack sizes the blocks itself (``chunk_size=None``).
AUTO_BLOCK_ELEMENTS = 1 << 24


def auto_chunk_size(rows: int, n: int) -> int:
    """``chunk_size`` for ``rows`` searches over ``n`` features: blocks of about :data:`AUTO_BLOCK_ELEMENTS` scores."""
    return max(1, AUTO_BLOCK_ELEMENTS // max(1, rows * n))


def pair_bound(a: Tensor, nb: Tensor, domain: Tensor) -> Tensor:
    """``U_p = (a_p + max a) * (nb_p + max nb)`` (maxima over the domain), ``-inf`` where no pair can be admissible.

    In the orientation of :func:`select_features` (admissible: ``a > 0`` and ``nb > 0``) it bounds
    the score of every admissible pair through ``p``; removing features from the domain only
    lowers the maxima, so it stays a bound.
    """
    neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
    a_up = a + torch.where(domain, a, neg_inf).amax(dim=1, keepdim=True)
    nb_up = nb + torch.where(domain, nb, neg_inf).amax(dim=1, keepdim=True)
    return torch.where(domain & (a_up > 0) & (nb_up > 0), a_up * nb_up, neg_inf)


def select_features(
    alpha: Tensor,
    beta: Tensor,
    domain: Tensor,
    increase: bool,
    pairs: bool = True,
    chunk_size: int = 1024,
    candidates: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick, per row, the feature pair (or single feature) of highest JSMA saliency.

    Papernot et al. 2016, Algorithm 3 (pairs) and equation 8 (single features).
    With ``a = alpha_p + alpha_q`` and ``b = beta_p + beta_q`` over distinct features
    ``p < q`` of the domain, a pair is admissible when ``a > 0`` and ``b < 0``
    (``increase=True``) or ``a < 0`` and ``b > 0`` (``increase=False``); its score is
    ``|a| * |b|``. The admissible pair of highest score wins; among equal scores the
    lowest ``(p, q)`` in row-major order. ``pairs=False`` applies the same rule to single
    features.

    The exact search bounds the score of every pair through ``p`` by
    ``U_p = (a_p + max a) * (-b_p + max -b)`` (in the ``increase`` orientation; the bound
    is monotone in floating point as well), searches the features of highest ``U`` and
    doubles their number until the first feature left out has ``U`` below the best
    score found. Only pairs of candidates are ever scored, ``chunk_size * n`` of them
    per row at a time.

    Parameters
    ----------
    alpha, beta:
        Float ``(B, n)``: gradient of the target score and of the sum of the other scores.
    domain:
        Bool ``(B, n)``: the features that may still be chosen.
    increase:
        Orientation of the admissibility test (see above).
    pairs:
        Search pairs of features (the paper's map) or single features.
    chunk_size:
        Memory knob: a block of the pair search holds at most ``chunk_size * n`` pair
        scores per row (``chunk_size`` rows of the full ``n x n`` matrix).
    candidates:
        Restrict the pair search to the ``candidates`` features of highest bound ``U``
        (exact when ``candidates >= n``; ``None`` is exact). Ignored for single features.

    Returns
    -------
    (index, score, found):
        ``index`` long ``(B, 2)`` with ``p < q`` (``(B, 1)`` for single features),
        ``score`` float ``(B,)`` the saliency of the choice, and ``found`` bool ``(B,)``,
        whether any admissible choice existed. Where ``found`` is false, index and score are 0.

    Examples
    --------
    >>> alpha = torch.tensor([[1.0, 2.0, -1.0]]); beta = -alpha
    >>> select_features(alpha, beta, torch.ones(1, 3, dtype=torch.bool), increase=True)[0]
    tensor([[0, 1]])
    """
    if alpha.dim() != 2 or beta.shape != alpha.shape or domain.shape != alpha.shape:
        raise ValueError(
            "alpha, beta and domain must share one (B, n) shape, got "
            f"{tuple(alpha.shape)}, {tuple(beta.shape)} and {tuple(domain.shape)}"
        )
    if domain.dtype != torch.bool:
        raise ValueError(f"domain must be a bool tensor, got dtype {domain.dtype}")
    check_number("chunk_size", chunk_size, low=1, integer=True)
    if candidates is not None:
        check_number("candidates", candidates, low=2 if pairs else 1, integer=True)
    # One orientation only: for a decrease, flip both signs so that admissible means a > 0, b < 0.
    a = alpha if increase else -alpha
    nb = -beta if increase else beta  # nb = -b: admissible means nb > 0
    if not pairs:
        return _best_single(a, nb, domain)
    return _best_pair(a, nb, domain, chunk_size, candidates)


def _best_single(a: Tensor, nb: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    ok = (a > 0) & (nb > 0) & domain
    score = torch.where(ok, a * nb, torch.full_like(a, -math.inf))
    best, index = score.max(dim=1)  # first maximal index: lowest feature on ties
    found = ok.any(dim=1)
    return (
        torch.where(found, index, 0)[:, None],
        torch.where(found, best, 0.0),
        found,
    )


def _best_pair(
    a: Tensor, nb: Tensor, domain: Tensor, chunk_size: int, candidates: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    rows, n = a.shape
    device = a.device
    index = torch.zeros(rows, 2, dtype=torch.long, device=device)
    score = torch.zeros(rows, dtype=a.dtype, device=device)
    found = torch.zeros(rows, dtype=torch.bool, device=device)
    if n < 2 or rows == 0:
        return index, score, found
    neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=device)
    bound = _row_maxima(a, nb, domain, chunk_size)
    if bound is None:
        bound = pair_bound(a, nb, domain)
    # Stable sort: equal bounds keep index order, so the candidate sets are deterministic.
    order_bound, order = torch.sort(bound, dim=1, descending=True, stable=True)
    limit = n if candidates is None else min(candidates, n)
    m = min(limit, _FIRST_CANDIDATES)
    todo = torch.arange(rows, device=device)
    while True:
        idx = order[todo, :m].sort(dim=1).values  # ascending: row-major order of pairs is kept
        sub_dom = torch.gather(domain[todo], 1, idx) & (torch.gather(bound[todo], 1, idx) > neg_inf)
        p_q, best, ok = _search_pairs(
            torch.gather(a[todo], 1, idx), torch.gather(nb[todo], 1, idx), sub_dom, max(1, chunk_size * n // m)
        )
        index[todo] = torch.gather(idx, 1, p_q)
        score[todo] = torch.where(ok, best, 0.0)
        found[todo] = ok
        if m >= limit:
            break
        # Proof of optimality: every pair with a feature outside the candidates scores at most
        # that feature's bound, so the search is exact once the largest such bound is below the best.
        left_out = order_bound[todo, m]
        settled = (left_out == neg_inf) | (ok & (left_out < best))
        todo = todo[~settled]
        if todo.numel() == 0:
            break
        m = min(limit, 2 * m)
    index = torch.where(found[:, None], index, 0)
    return index, score, found


def _row_maxima(a: Tensor, nb: Tensor, domain: Tensor, chunk_size: int) -> Tensor | None:
    """The best score of a pair through each feature, ``-inf`` where none is admissible.

    The score ``(a_p + a_q) * (nb_p + nb_q)`` of an admissible pair grows with ``a_q`` and
    ``nb_q`` (in floating point too, rounding being monotone), so the best partner of any
    ``p`` is found among the features no other feature dominates in both ``a`` and ``nb``:
    the first two Pareto layers (the second stands in when the best partner would be ``p``
    itself). These layers are small unless ``a`` and ``nb`` are strongly anti-correlated;
    returns ``None`` when they hold more than ``_MAX_FRONTIER`` features.
    """
    rows, n = a.shape
    neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
    # order by a, then nb, both descending: a feature is on the layer when its nb beats every one before it
    by_nb = torch.sort(torch.where(domain, nb, neg_inf), dim=1, descending=True, stable=True).indices
    order = torch.gather(by_nb, 1, torch.sort(torch.gather(torch.where(domain, a, neg_inf), 1, by_nb), dim=1,
                                              descending=True, stable=True).indices)
    nb_sorted = torch.where(torch.gather(domain, 1, order), torch.gather(nb, 1, order), neg_inf)

    def layer(values: Tensor) -> Tensor:
        before = torch.cat([neg_inf.expand(rows, 1), values.cummax(dim=1).values[:, :-1]], dim=1)
        return values > before

    first = layer(nb_sorted)
    second = layer(torch.where(first, neg_inf, nb_sorted)) & ~first
    partners = first | second
    size = int(partners.sum(dim=1).max())
    if size == 0:  # empty domain in every row: no pair is admissible
        return torch.full((rows, n), -math.inf, dtype=a.dtype, device=a.device)
    if size > _MAX_FRONTIER:
        return None
    keep = torch.sort(partners.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :size]
    q = torch.gather(order, 1, keep)  # (rows, size) feature indices of the partners
    q_ok = torch.gather(partners, 1, keep)
    a_q, nb_q = torch.gather(a, 1, q), torch.gather(nb, 1, q)
    best = torch.full((rows, n), -math.inf, dtype=a.dtype, device=a.device)
    block = max(1, chunk_size * n // max(size, 1))
    for start in range(0, n, block):
        stop = min(start + block, n)
        s_a = a[:, start:stop, None] + a_q[:, None, :]
        s_b = nb[:, start:stop, None] + nb_q[:, None, :]
        ok = (s_a > 0) & (s_b > 0) & q_ok[:, None, :]
        ok &= q[:, None, :] != torch.arange(start, stop, device=a.device)[None, :, None]
        best[:, start:stop] = s_a.mul_(s_b).masked_fill_(~ok, -math.inf).amax(dim=2)
    return torch.where(domain, best, neg_inf)


def _search_pairs(a: Tensor, nb: Tensor, domain: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exhaustive best-pair search over ``(B, m)`` features, ``block`` rows of pairs at a time.

    Returns positions ``(B, 2)`` into the ``m`` features, the best score and whether one was admissible.
    """
    rows, m = a.shape
    device = a.device
    best = torch.full((rows,), -math.inf, dtype=a.dtype, device=device)
    where = torch.zeros(rows, dtype=torch.long, device=device)
    cols = torch.arange(m, device=device)
    for start in range(0, m - 1, block):
        stop = min(start + block, m - 1)  # the last row has no q > p
        s_a = a[:, start:stop, None] + a[:, None, :]
        s_b = nb[:, start:stop, None] + nb[:, None, :]
        ok = (s_a > 0) & (s_b > 0)
        ok &= domain[:, start:stop, None] & domain[:, None, :]
        ok &= cols[None, :] > cols[start:stop, None]
        s_a.mul_(s_b).masked_fill_(~ok, -math.inf)
        del s_b, ok
        value, flat = s_a.reshape(rows, -1).max(dim=1)  # first maximum: lowest (p, q) in the block
        better = value > best  # strict: an earlier block keeps its pair on ties
        best = torch.where(better, value, best)
        where = torch.where(better, flat + start * m, where)
    found = best > -math.inf
    return torch.stack([where // m, where % m], dim=1), best, found
