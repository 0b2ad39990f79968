"""The batched (one arg-max per selection) pair selections of segmentation JSMA against the sequential searches."""

from __future__ import annotations

import pytest
import torch

from salmap.attacks.seg_saliency import choose
from salmap.pair_pool import PairMatrix
from salmap.pair_search import select_features


def compare(batched, sequential) -> None:
    """The same valid selections, column for column (the batched form may have more, all invalid)."""
    width = sequential[0].shape[1]
    b_index, b_sign, b_valid = batched
    s_index, s_sign, s_valid = sequential
    assert torch.equal(b_valid[:, :width], s_valid)
    assert not b_valid[:, width:].any()
    assert torch.equal(b_index[:, :width][s_valid], s_index[s_valid])
    assert torch.equal(b_sign[:, :width][s_valid], s_sign[s_valid])


@pytest.mark.parametrize("pool", [16, 64, 1000])
@pytest.mark.parametrize("binary", [True, False])
def test_batched_selections_equal_the_sequential_searches(pool: int, binary: bool) -> None:
    # binary: beta = -alpha (a tight bound: the pool proves itself); else independent alpha and
    # beta (a loose bound: rows fall back to the sequential search).
    gen = torch.Generator().manual_seed(pool + binary)
    alpha = torch.randn(5, 600, generator=gen)
    beta = -alpha if binary else torch.randn(5, 600, generator=gen)
    flat = torch.rand(5, 600, generator=gen)
    flat[:, :100] = 1.0  # saturated features only go down
    domain = torch.rand(5, 600, generator=gen) < 0.9
    domain[4] = False  # nothing to choose
    allowed = torch.tensor([8, 8, 3, 0, 8])
    kwargs = dict(theta=0.5, bounds=(0.0, 1.0), k=8, pairs=True, candidates=None, pool=pool)
    sequential = choose(alpha, beta, flat, domain, allowed, chunk_size=64, batched=False, **kwargs)
    batched = choose(alpha, beta, flat, domain, allowed, chunk_size=None, batched=True, **kwargs)
    compare(batched, sequential)
    assert sequential[2][0].sum() == 16 and not batched[2][3:].any()


def test_pair_matrix_best_is_select_features_over_the_pool() -> None:
    gen = torch.Generator().manual_seed(3)
    alpha, beta = torch.randn(3, 200, generator=gen), torch.randn(3, 200, generator=gen)
    domain = torch.rand(3, 200, generator=gen) < 0.8
    matrix = PairMatrix(alpha, beta, domain, True, 500)  # the pool holds every feature: exact, settled
    remaining = domain.clone()
    for _ in range(5):
        features, score, found, settled = matrix.best()
        want = select_features(alpha, beta, remaining, True)
        assert torch.equal(features, want[0]) and torch.equal(found, want[2]) and settled.all()
        torch.testing.assert_close(score, want[1])
        matrix.remove(features)
        remaining.scatter_(1, features, False)
