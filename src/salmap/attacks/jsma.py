"""JSMA: the Jacobian-based Saliency Map Attack of Papernot et al. (2016), for classifiers.

Papernot, McDaniel, Jha, Fredrikson, Celik and Swami, "The Limitations of Deep Learning
in Adversarial Settings", IEEE EuroS&P 2016 (Algorithms 2 and 3, equations 8-9).

The attack reads the forward derivative of the model: for the target class ``t``,
``alpha = dZ_t/dx`` and ``beta = sum_{j != t} dZ_j/dx`` (one forward pass and two
vector-Jacobian products per iteration, see :func:`salmap.gradients.class_score_grads`).
The saliency map then picks the pair of features ``(p, q)`` that maximises
``(alpha_p + alpha_q) * |beta_p + beta_q|`` among the admissible pairs, changes both
by ``theta`` and removes them from the search domain.

The pair search (:func:`select_features`) is vectorised over the batch and exact by
default. It never materialises the ``n x n`` pair matrix: every feature ``p`` gets an
upper bound ``U_p`` on the score of any pair containing it (its exact best, found among
the Pareto-optimal partners, or a cruder bound), the search runs over the features of
highest bound (in blocks of rows), and it widens the set until the bound of the first
feature left out is below the best pair found, which proves the pair optimal.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from salmap._validate import Bounds, check_number
from salmap.attacks.base import Attack
from salmap.gradients import Model, class_score_grads
from salmap.registry import register_attack

__all__ = ["JSMA", "select_features"]

log = logging.getLogger(__name__)

#: Number of candidate features the exact pair search starts with before widening.
_FIRST_CANDIDATES = 16
#: Largest set of best-partner features for which the exact row maxima bound the search.
_MAX_FRONTIER = 4096
#: Pair scores one block of the pair search may hold (about 10 bytes each in flight)
#: when ``JSMA(chunk_size=None)`` sizes the blocks itself.
_AUTO_BLOCK_ELEMENTS = 1 << 24


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
        # Upper bound of the score of any admissible pair through p; -inf where no pair can be admissible.
        a_max = torch.where(domain, a, neg_inf).amax(dim=1, keepdim=True)
        nb_max = torch.where(domain, nb, neg_inf).amax(dim=1, keepdim=True)
        a_up, nb_up = a + a_max, nb + nb_max
        bound = torch.where(domain & (a_up > 0) & (nb_up > 0), a_up * nb_up, neg_inf)
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


@register_attack(
    "jsma", default_targeting="random",
    ranges={"gamma": "(0, 1]", "saturation": "[0, 1)", "candidates": "[2, inf)", "chunk_size": "[1, inf)"},
)
class JSMA(Attack):
    """Jacobian-based Saliency Map Attack: change the most salient feature pairs by ``theta``.

    Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", 2016
    (Algorithm 3 with the pairwise saliency map; ``pairs=False`` is the single-feature
    map of equation 8). Each iteration costs one forward pass and two vector-Jacobian
    products over the samples still running: ``alpha = dZ_t/dx`` and
    ``beta = sum_{j != t} dZ_j/dx`` with ``Z`` the logits (or the softmax outputs when
    ``probabilities=True``). The admissible pair of highest ``|alpha_p + alpha_q| *
    |beta_p + beta_q|`` is changed by ``theta``, clipped to the bounds and removed from
    the search domain, which starts as the features not already at (or within
    ``saturation`` of) the bound ``theta`` points to. A sample stops when the model
    predicts the goal, when the next change would exceed ``floor(gamma * n)`` changed
    features, or when no admissible pair is left.

    Targeted calls (``target=``) push towards ``t``: with ``theta > 0`` pairs need
    ``alpha`` sum ``> 0`` and ``beta`` sum ``< 0`` (the reverse with ``theta < 0``).
    Untargeted calls (``y=``) use the true class in ``t``'s place with the signs reversed
    (push ``Z_y`` down and the others up); success is any other prediction.

    Parameters
    ----------
    model: classifier returning ``(B, K)`` outputs, any ``K >= 2`` and input shape.
    theta: change applied to each chosen feature (non-zero; ``+1`` saturates ``[0, 1]`` inputs).
    gamma: largest fraction of the features that may be changed, in ``(0, 1]``.
    pairs: the paper's pairwise map (default) or the single-feature map.
    probabilities: differentiate softmax outputs instead of logits.
    candidates: restrict the pair search to the ``candidates`` most promising features
        (highest bound on their pair score); ``None`` (default) is the exact search, and so
        is any ``candidates >= n``.
    chunk_size: rows of the ``n x n`` pair matrix scored at a time per sample; peak memory of
        the search is about ``10 * B * chunk_size * n`` bytes. ``None`` sizes blocks to
        about ``2**24`` pair scores.
    bounds: valid input range ``(low, high)``. Default ``(0.0, 1.0)``.
    strict_targets: a target equal to the model's clean prediction is an error (default).
        With ``False`` such samples are returned unchanged (already at their goal), which
        suits runs over datasets with misclassified samples and random targets.
    saturation: a feature within ``saturation * (high - low)`` of the bound ``theta`` points
        to counts as saturated and starts outside the search domain; in ``[0, 1)``.
        Default 0.01. ``0`` keeps every feature not exactly at the bound, the literal
        domain of Algorithm 3; but a feature at 254/255 of an 8-bit image would then
        spend a unit of the L0 budget on a change of 1/255, which the saliency map
        (scored for a change of ``theta``) does not foresee. On the lenet of
        benchmarks/jsma.py this margin lifts success from 63.1% to 65.7% on its 983 correctly classified test images
        (65% to 69% on the 100 of the benchmark); with it, and the same number of
        iterations, the attack picks exactly the same pairs as torchattacks' JSMA
        (whose domain is ``x < 0.99``) on all 100 images.

    Examples
    --------
    >>> attack = JSMA(model, theta=1.0, gamma=0.145)          # doctest: +SKIP
    >>> result = attack(x, target=(y + 1) % 10)              # doctest: +SKIP
    >>> result.success_rate, result.l0_fraction.mean()       # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        theta: float = 1.0,
        gamma: float = 0.145,
        pairs: bool = True,
        probabilities: bool = False,
        candidates: int | None = None,
        chunk_size: int | None = None,
        bounds: Bounds = (0.0, 1.0),
        strict_targets: bool = True,
        saturation: float = 0.01,
    ) -> None:
        super().__init__(model, bounds)
        self.strict_targets = bool(strict_targets)
        self.theta = float(check_number("theta", theta))
        if self.theta == 0:
            raise ValueError("theta must be non-zero (the change applied to each chosen feature), got 0")
        self.gamma = float(check_number("gamma", gamma, low=0.0, high=1.0, low_open=True))
        self.pairs = bool(pairs)
        self.probabilities = bool(probabilities)
        self.candidates = None if candidates is None else check_number(
            "candidates", candidates, low=2 if self.pairs else 1, integer=True
        )
        self.chunk_size = None if chunk_size is None else check_number("chunk_size", chunk_size, low=1, integer=True)
        self.saturation = float(check_number("saturation", saturation, low=0.0, high=1.0, high_open=True))

    def _check_labels(self, x: Tensor, labels: object, targeted: bool, clean: Tensor) -> Tensor:
        checked = super()._check_labels(x, labels, targeted, clean)
        if targeted and self.strict_targets:
            same = (checked == clean.argmax(dim=1)).nonzero().flatten()
            if same.numel():
                raise ValueError(
                    "target must differ from the model's clean prediction, got target == prediction "
                    f"for sample(s) {same[:10].tolist()} (strict_targets=False leaves such samples unchanged)"
                )
        return checked

    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.bounds
        batch, shape = x.shape[0], x.shape[1:]
        n = x[0].numel()
        flat = x.reshape(batch, n).clone()
        # The search domain: features that can still move towards the bound theta points to, by
        # more than the saturation margin (a pixel at 254/255 has no room left for a change).
        margin = self.saturation * (high - low)
        domain = flat < high - margin if self.theta > 0 else flat > low + margin
        steps = math.floor(self.gamma * n) // (2 if self.pairs else 1)
        # Targeted with theta > 0, or untargeted with theta < 0, look for pairs that raise Z_t.
        increase = (self.theta > 0) == targeted
        iterations = torch.zeros(batch, dtype=torch.long, device=x.device)
        active = torch.arange(batch, device=x.device)[: batch if steps > 0 else 0]
        while active.numel():
            scores, alpha, beta = class_score_grads(
                self.model, flat[active].view(-1, *shape), labels[active], self.probabilities
            )
            pred = scores.argmax(dim=1)
            going = pred != labels[active] if targeted else pred == labels[active]
            rows = active[going]
            chunk = self.chunk_size or max(1, _AUTO_BLOCK_ELEMENTS // max(1, rows.numel() * n))
            index, _, found = select_features(
                alpha.reshape(-1, n)[going], beta.reshape(-1, n)[going], domain[rows], increase,
                pairs=self.pairs, chunk_size=chunk, candidates=self.candidates,
            )
            rows, index = rows[found], index[found]
            at = (rows[:, None], index)
            flat[at] = (flat[at] + self.theta).clamp(low, high)
            domain[at] = False
            iterations[rows] += 1
            active = rows[iterations[rows] < steps]
        log.debug("JSMA: %d samples, %d iterations at most", batch, int(iterations.max()))
        return flat.view_as(x), iterations
