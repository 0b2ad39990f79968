"""JSMA's exact pair search (salmap.pair_search): against a brute-force reference written from the paper."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import salmap.pair_search as pair_search_module
from salmap.pair_pool import PairPool
from salmap.pair_search import select_features

# -- slow reference, straight from Papernot et al. 2016 ----------------------------------------


def reference_select(alpha: list[float], beta: list[float], domain: list[int], increase: bool,
                     pairs: bool) -> tuple[tuple[int, ...] | None, float]:
    """Algorithm 3 (pairs) or equation 8 (single features): loop over every choice in index order."""
    best, choice = -math.inf, None
    groups = itertools.combinations(sorted(domain), 2) if pairs else ((p,) for p in sorted(domain))
    for group in groups:
        a = sum(alpha[i] for i in group)
        b = sum(beta[i] for i in group)
        admissible = (a > 0 and b < 0) if increase else (a < 0 and b > 0)
        if admissible and abs(a) * abs(b) > best:  # strict: the first (lowest) choice keeps ties
            best, choice = abs(a) * abs(b), group
    return choice, best


# -- select_features ---------------------------------------------------------------------------


@pytest.mark.parametrize("frontier", [4096, 0])
@pytest.mark.parametrize("first", [256, 2])
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("increase", [True, False])
def test_select_features_matches_brute_force(monkeypatch, increase, pairs, first, frontier):
    # first=2 forces the exact search to widen its candidate set; frontier=0 uses the cruder bound
    monkeypatch.setattr(pair_search_module, "_FIRST_CANDIDATES", first)
    monkeypatch.setattr(pair_search_module, "_MAX_FRONTIER", frontier)
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 30, (1,), generator=gen))
        alpha = torch.randn(3, n, generator=gen, dtype=torch.float64)
        beta = torch.randn(3, n, generator=gen, dtype=torch.float64)
        if seed % 2:
            beta = -alpha + 0.2 * beta  # correlated, as with probabilities
        domain = torch.rand(3, n, generator=gen) > 0.25
        for chunk in (1, 3, 1024):
            index, score, found = select_features(alpha, beta, domain, increase, pairs, chunk_size=chunk)
            for r in range(3):
                want, best = reference_select(alpha[r].tolist(), beta[r].tolist(),
                                              domain[r].nonzero().flatten().tolist(), increase, pairs)
                assert bool(found[r]) == (want is not None)
                if want is not None:
                    assert tuple(index[r].tolist()) == want, (seed, chunk, r)
                    assert float(score[r]) == pytest.approx(best, rel=1e-12)
                else:
                    assert index[r].tolist() == [0] * (2 if pairs else 1) and float(score[r]) == 0.0


def test_select_features_ties_pick_lowest_index():
    alpha = torch.ones(2, 5)
    beta = -torch.ones(2, 5)
    domain = torch.ones(2, 5, dtype=torch.bool)
    domain[1, 0] = False
    index, score, found = select_features(alpha, beta, domain, True, pairs=True, chunk_size=1)
    assert index.tolist() == [[0, 1], [1, 2]] and score.tolist() == [4.0, 4.0] and found.all()
    index, _, _ = select_features(alpha, beta, domain, True, pairs=False)
    assert index.tolist() == [[0], [1]]


def test_select_features_none_admissible():
    alpha = torch.tensor([[1.0, 2.0, 3.0], [1.0, -5.0, 2.0]])
    beta = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 2.0, -1.0]])  # row 0: beta sums never negative
    domain = torch.tensor([[True, True, True], [True, True, False]])
    index, score, found = select_features(alpha, beta, domain, True)
    assert found.tolist() == [False, False]  # row 1: only (0, 1) is in the domain, and a < 0
    assert index.tolist() == [[0, 0], [0, 0]] and score.tolist() == [0.0, 0.0]


def test_candidates_restrict_and_cover():
    gen = torch.Generator().manual_seed(3)
    alpha, beta = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    domain = torch.ones(4, 50, dtype=torch.bool)
    exact = select_features(alpha, beta, domain, True)
    for k in (50, 80):
        approx = select_features(alpha, beta, domain, True, candidates=k)
        assert torch.equal(approx[0], exact[0]) and torch.equal(approx[1], exact[1])
    # with 2 candidates the only pair searched is that of the two highest bounds
    two = select_features(alpha, beta, domain, True, candidates=2)
    assert (two[1] <= exact[1]).all()


def test_select_features_rejects_bad_shapes():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="alpha, beta and domain"):
        select_features(a, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), True)
    with pytest.raises(ValueError, match="domain"):
        select_features(a, a, torch.ones(2, 3), True)
    with pytest.raises(ValueError, match="chunk_size"):
        select_features(a, a, torch.ones(2, 3, dtype=torch.bool), True, chunk_size=0)


def test_select_features_with_an_empty_domain_finds_nothing():
    alpha, beta = torch.randn(2, 5), torch.randn(2, 5)
    for pairs in (True, False):
        empty = torch.zeros(2, 5, dtype=torch.bool)
        index, score, found = select_features(alpha, beta, empty, increase=True, pairs=pairs)
        assert not found.any() and (score == 0).all() and (index == 0).all()
    one_row = torch.tensor([[False] * 5, [True] * 5])
    _, _, found = select_features(torch.ones(2, 5), -torch.ones(2, 5), one_row, increase=True)
    assert found.tolist() == [False, True]


# -- the shared pool of segmentation JSMA -----------------------------------------------------


@pytest.mark.parametrize("increase", [True, False])
@pytest.mark.parametrize("candidates", [None, 40])
def test_shared_pool_equals_repeated_full_searches(increase: bool, candidates: int | None) -> None:
    # Independent alpha and beta (a multi-class map): the pool's bound is loose, so the
    # proof fails in some rows and the full search must take over there.
    gen = torch.Generator().manual_seed(7)
    alpha, beta = torch.randn(4, 600, generator=gen), torch.randn(4, 600, generator=gen)
    domain = torch.rand(4, 600, generator=gen) < 0.9
    domain[3] = False  # a row with nothing left finds nothing
    for pool in (16, 64):
        search = PairPool(alpha, beta, domain, increase, True, 64, candidates, pool)
        assert search.index is not None
        mine, full = domain.clone(), domain.clone()
        for _ in range(12):
            got = search.best(mine)
            want = select_features(alpha, beta, full, increase, True, 64,
                                   None if candidates is None else candidates)
            if candidates is None:  # exact: the very same pairs as searching everything each time
                for g, w in zip(got, want, strict=True):
                    assert torch.equal(g, w)
            else:  # approximate: admissible pairs of the domain, no better than the exact best
                exact = select_features(alpha, beta, mine, increase, True, 64)
                assert torch.equal(got[2], exact[2])
                assert (got[1] <= exact[1] + 1e-6).all()
                assert torch.gather(mine, 1, got[0])[got[2]].all()
            rows = torch.arange(4)[:, None].expand(4, 2)
            mine[rows[got[2]], got[0][got[2]]] = False
            full[rows[want[2]], want[0][want[2]]] = False
        assert not got[2][3]
