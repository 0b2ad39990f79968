"""The batched (one arg-max per selection) pair selections of segmentation JSMA against the
sequential pool searches, the bounds that prove them exact, and what one batched call costs:
dispatched operators and host reads (``_local_scalar_dense`` is what ``item()``/``bool()`` run)."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from _dispatch import READS, Recorder
from torch import Tensor, nn

import salmap.attacks.jsma_seg as jsma_seg
import salmap.attacks.seg_saliency as seg_saliency
import salmap.pair_pool as pair_pool
from salmap.attacks import SegmentationJSMA
from salmap.attacks.seg_saliency import choose
from salmap.pair_matrix import PairMatrix
from salmap.pair_pool import left_out_bounds, pool_of
from salmap.pair_search import pair_bound, select_features


@pytest.fixture
def first_unproven(monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    """The first unproven selection of every row of each batched call (``k``: all proven)."""
    seen: list[Tensor] = []
    real = seg_saliency.choose_on_device

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        seen.append(out[3].clone())
        return out

    monkeypatch.setattr(seg_saliency, "choose_on_device", spy)
    return seen


def compare(batched: tuple[Tensor, ...], sequential: tuple[Tensor, ...]) -> None:
    """The same valid selections, column for column (the batched form may have more, all invalid)."""
    width = sequential[0].shape[1]
    b_index, b_sign, b_valid = batched
    s_index, s_sign, s_valid = sequential
    assert torch.equal(b_valid[:, :width], s_valid)
    assert not b_valid[:, width:].any()
    assert torch.equal(b_index[:, :width][s_valid], s_index[s_valid])
    assert torch.equal(b_sign[:, :width][s_valid], s_sign[s_valid])


def gradients(kind: str, seed: int, rows: int = 6, n: int = 600) -> tuple[Tensor, ...]:
    """alpha, beta, inputs, domain and allowed selections of ``rows`` rows, each a case:
    row 3 may choose nothing (allowed 0), row 4 has an empty domain, row 5 one selection."""
    gen = torch.Generator().manual_seed(seed)
    alpha = torch.randn(rows, n, generator=gen)
    if kind == "ties":  # few distinct values: many equal scores, in the pool and at its edge
        alpha = torch.randint(-3, 4, (rows, n), generator=gen).float()
    beta = {
        "binary": -alpha,  # a tight pair bound
        "independent": torch.randn(rows, n, generator=gen),
        "ties": torch.randint(-3, 4, (rows, n), generator=gen).float(),
        "anti": alpha + 0.3 * torch.randn(rows, n, generator=gen),  # a long Pareto front of the left-out features
    }[kind]
    flat = torch.rand(rows, n, generator=gen)
    flat[:, :100] = 1.0  # saturated features only go down
    flat[:, 100:150] = 0.0  # and these only up
    domain = torch.rand(rows, n, generator=gen) < 0.9
    domain[4] = False
    allowed = torch.tensor([8, 8, 8, 0, 8, 1])
    return alpha, beta, flat, domain, allowed


@pytest.mark.parametrize("pool", [2, 16, 64, 1000])
@pytest.mark.parametrize("kind", ["binary", "independent", "ties", "anti"])
def test_batched_selections_equal_the_sequential_searches(
    kind: str, pool: int, monkeypatch: pytest.MonkeyPatch, first_unproven: list[Tensor]
) -> None:
    monkeypatch.setattr(seg_saliency, "DEVICE_POOL", 1)  # the pool as given, smaller than n but for 1000
    alpha, beta, flat, domain, allowed = gradients(kind, pool)
    kwargs: dict[str, Any] = dict(theta=0.5, bounds=(0.0, 1.0), k=8, pairs=True, candidates=None, pool=pool)
    sequential = choose(alpha, beta, flat, domain, allowed, chunk_size=64, batched=False, **kwargs)
    batched = choose(alpha, beta, flat, domain, allowed, chunk_size=None, batched=True, **kwargs)
    compare(batched, sequential)
    assert sequential[2][0].sum() == 16 and sequential[2][5].sum() == 2 and not batched[2][3:5].any()
    (first,) = first_unproven
    if pool >= 600:  # nothing left out: every selection is proven
        assert (first == 8).all()
    if pool == 2:  # one pair empties the pool: the searches take over by the second selection
        assert (first[[0, 1, 2]] <= 1).all()


def test_rows_in_groups_and_bounds_per_feature_equal_the_sequential_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seg_saliency, "DEVICE_POOL", 1)
    monkeypatch.setattr(seg_saliency, "_DEVICE_SCORES", 3 * 32 * 32)  # three rows per matrix: two groups
    alpha, beta, flat, domain, allowed = gradients("independent", 5)
    low, high = torch.full((1, 600), 0.1), torch.linspace(0.5, 1.0, 600)[None]
    flat = torch.minimum(torch.maximum(flat, low), high)
    kwargs: dict[str, Any] = dict(theta=0.3, bounds=(low, high), k=8, pairs=True, candidates=None, pool=32)
    sequential = choose(alpha, beta, flat, domain, allowed, chunk_size=64, batched=False, **kwargs)
    compare(choose(alpha, beta, flat, domain, allowed, chunk_size=None, batched=True, **kwargs), sequential)


def test_pair_matrix_selections_are_the_exhaustive_best_of_both_directions() -> None:
    gen = torch.Generator().manual_seed(3)
    a, nb = torch.randn(3, 2, 200, generator=gen), torch.randn(3, 2, 200, generator=gen)
    domain = torch.rand(3, 2, 200, generator=gen) < 0.8
    # the pool holds every feature: each selection is exact and proven
    chosen = PairMatrix(a, nb, domain, 500, exact=True).select(6, torch.tensor([6, 6, 2]))
    remaining = domain.clone()
    for j in range(6):
        # select_features' increase orientation takes beta = -nb
        i_up, s_up, f_up = select_features(a[:, 0], -nb[:, 0], remaining[:, 0], True)
        i_dn, s_dn, f_dn = select_features(a[:, 1], -nb[:, 1], remaining[:, 1], True)
        up = f_up & (~f_dn | (s_up >= s_dn))
        live = (f_up | f_dn) & (torch.tensor([6, 6, 2]) > j)
        assert torch.equal(chosen.valid[:, j], live)
        assert torch.equal(chosen.features[live, j], torch.where(up[:, None], i_up, i_dn)[live])
        assert torch.equal(chosen.increase[live, j], up[live])
        pick = chosen.features[:, j]
        remaining[:, 0].scatter_(1, pick, False)
        remaining[:, 1].scatter_(1, pick, False)
    assert (chosen.first_unproven == 6).all()


def brute_force(a: Tensor, nb: Tensor, domain: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The best admissible pair score of each pool feature with a left-out feature, and of two
    left-out features (0 where none), straight from the definition."""
    rows, n = a.shape
    inside = torch.zeros(rows, n, dtype=torch.bool).scatter_(1, index, True)
    s_a, s_b = a[:, :, None] + a[:, None, :], nb[:, :, None] + nb[:, None, :]
    ok = (s_a > 0) & (s_b > 0) & domain[:, :, None] & domain[:, None, :] & ~torch.eye(n, dtype=torch.bool)
    score = torch.where(ok, s_a * s_b, 0.0)
    with_out = torch.where(~inside[:, None, :], score, 0.0).amax(dim=2)
    among = torch.where(~inside[:, :, None] & ~inside[:, None, :], score, 0.0).flatten(1).amax(dim=1)
    return torch.gather(with_out, 1, index), among


@pytest.mark.parametrize("points, search", [(128, 1024), (4, 8), (2, 3)])
@pytest.mark.parametrize("kind", ["independent", "anti", "ties"])
def test_left_out_bounds_bound_every_pair_through_a_left_out_feature(
    kind: str, points: int, search: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # few points and a short search: the corners stand for most of the front
    monkeypatch.setattr(pair_pool, "_FRONT_POINTS", points)
    monkeypatch.setattr(pair_pool, "_FRONT_SEARCH", search)
    alpha, beta, _, domain, _ = gradients(kind, 7, n=120)
    a, nb = alpha, -beta  # select_features' increase orientation
    index, _ = pool_of(pair_bound(a, nb, domain), 24)
    partner, among = left_out_bounds(a, nb, domain, index)
    want_partner, want_among = brute_force(a, nb, domain, index)
    in_domain = torch.gather(domain, 1, index)
    assert (partner[in_domain] >= want_partner[in_domain]).all() and (among >= want_among).all()
    if points >= 120:  # every point of the front is kept: the bound of each pool feature is its best pair
        torch.testing.assert_close(partner[in_domain], want_partner[in_domain])
        assert (want_partner[in_domain] > 0).any()


def test_candidates_use_the_searches_only_where_the_pool_ran_dry(
    monkeypatch: pytest.MonkeyPatch, first_unproven: list[Tensor]
) -> None:
    monkeypatch.setattr(seg_saliency, "DEVICE_POOL", 1)
    alpha, beta, flat, domain, allowed = gradients("independent", 11)
    kwargs: dict[str, Any] = dict(theta=0.5, bounds=(0.0, 1.0), pairs=True, chunk_size=None, batched=True)

    def no_searches(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the pool searches ran")

    with monkeypatch.context() as patch:
        patch.setattr(seg_saliency, "_continue", no_searches)
        index, sign, valid = choose(alpha, beta, flat, domain, allowed, k=8, candidates=8, pool=64, **kwargs)
    assert torch.equal(valid.sum(dim=1), torch.tensor([16, 16, 16, 0, 0, 2]))
    for row in (0, 1, 2, 5):  # distinct features, each pair admissible in its direction
        picked = index[row][valid[row]]
        assert picked.unique().numel() == picked.numel()
    # a pool of 4 runs dry after two pairs at most while features are left out: the searches go on from there
    index, sign, valid = choose(alpha, beta, flat, domain, allowed, k=8, candidates=2, pool=4, **kwargs)
    assert (first_unproven[-1][[0, 1, 2]] <= 2).all()
    assert torch.equal(valid.sum(dim=1), torch.tensor([16, 16, 16, 0, 0, 2]))
    assert index[0][valid[0]].unique().numel() == 16


@pytest.mark.parametrize("candidates", [None, 8])
def test_one_batched_call_reads_the_device_once_and_dispatches_few_operators_per_selection(
    candidates: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One host read (the rows whose proof failed) and at most 8 operators per selection: the
    selections of one iteration are dispatch-bound on a GPU (about 10 us per operator)."""
    monkeypatch.setattr(seg_saliency, "DEVICE_POOL", 1)
    alpha, beta, flat, domain, allowed = gradients("binary", 2)
    costs = {}
    for k in (8, 24):
        recorder = Recorder()
        with recorder:
            _, _, valid = choose(alpha, beta, flat, domain, torch.where(allowed == 8, k, allowed), theta=0.5, bounds=(0.0, 1.0), k=k,
                                 pairs=True, chunk_size=None, candidates=candidates, pool=256, batched=True)
        assert recorder.reads == 1, [op for op in recorder.ops if op in READS]
        assert valid[0].sum() == 2 * k  # every selection came from the matrix (no search, which reads more)
        costs[k] = len(recorder.ops)
    per_selection = (costs[24] - costs[8]) / 16
    assert per_selection <= 8, costs
    assert costs[8] - 8 * per_selection <= 320, costs  # the pool, the matrix and the proofs, once


class Segmenter(nn.Module):
    """conv, tanh, conv: ``classes`` output channels (1: one binary logit per pixel)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(classes)
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


def batched_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """SegmentationJSMA with the batched selections forced, as on CUDA."""
    monkeypatch.setattr(jsma_seg, "choose", functools.partial(seg_saliency.choose, batched=True))


@pytest.mark.parametrize("classes, local, candidates", [(3, True, None), (1, False, None), (3, False, 12)])
def test_segmentation_jsma_with_batched_selections_equals_the_sequential_run(
    classes: int, local: bool, candidates: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.rand(3, 2, 12, 12, generator=torch.Generator().manual_seed(4))
    model = Segmenter(classes).eval()
    with torch.no_grad():
        out = model(x)
    target = (out[:, 0] <= 0).long() if classes == 1 else (out.argmax(1) + 1) % classes

    def run() -> Any:
        return SegmentationJSMA(model, gamma=0.3, k=4, local=local, candidates=candidates, max_iterations=6)(
            x, target=target)

    sequential = run()
    with monkeypatch.context() as patch:
        batched_attack(patch)
        patch.setattr(seg_saliency, "DEVICE_POOL", 1)
        patch.setattr(jsma_seg, "_POOL", 24)  # a pool of 24 of the 288 features: the proofs do the work
        batched = run()
    if candidates is None:  # exact: the same pairs; with candidates both are approximate
        assert torch.equal(batched.x_adv, sequential.x_adv)
        assert torch.equal(batched.iterations, sequential.iterations)
    assert (batched.l0 > 0).all() and (batched.l0 <= math.floor(0.3 * 288)).all()


def test_segmentation_jsma_reads_the_device_twice_per_batched_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows whose proof failed and the rows that stepped; the map's class scores read nothing
    (scatter, not one_hot, which checks its classes), nor do the changes (scatters, no masks)."""
    batched_attack(monkeypatch)
    x = torch.rand(4, 2, 10, 10, generator=torch.Generator().manual_seed(6))
    model = Segmenter(3).eval()
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 3
    reads = {}
    for iterations in (1, 5):
        recorder = Recorder()
        with recorder:
            result = SegmentationJSMA(model, gamma=0.2, k=3, max_iterations=iterations)(x, target=target)
        assert int(result.iterations.max()) == iterations
        reads[iterations] = recorder.reads
    assert reads[5] - reads[1] <= 2 * 4, reads


@pytest.mark.parametrize("k", [1, 2])
def test_segmentation_jsma_with_batched_selections_runs_with_one_pair_per_iteration(
    k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k = 1 made the batched selections' validity mask a view whose elements share memory (an
    expansion flattened), and the attack's in-place update of it failed on CUDA."""
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    model = Segmenter(3).eval()
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 3

    def run() -> Any:
        return SegmentationJSMA(model, gamma=0.2, k=k, max_iterations=3)(x, target=target)

    sequential = run()
    batched_attack(monkeypatch)
    batched = run()
    assert torch.equal(batched.x_adv, sequential.x_adv)
    assert (batched.l0 > 0).all()
