"""``AttackResult`` is a batch: ``len(r)``, ``r[i]``, ``r[a:b]``, ``r[mask]``, ``r[indices]`` select
every per-sample field and keep the per-run ones; selections pickle and move like any result."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from conftest import LinearClassifier

from salmap.attacks import FGSM, AttackResult, SegmentationJSMA

PER_SAMPLE = ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after", "labels")


class _Counting(LinearClassifier):
    """Counts forward passes (the adversarial prediction is one, deferred)."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x)


def _result(n: int = 6) -> tuple[AttackResult, _Counting]:
    torch.manual_seed(0)
    model = _Counting(torch.randn(4, 12)).eval()
    x = torch.rand(n, 12, generator=torch.Generator().manual_seed(1))
    return FGSM(model, eps=0.2)(x, y=torch.arange(n) % 4), model


def _same(part: AttackResult, whole: AttackResult, rows: list[int]) -> None:
    """Every per-sample field of ``part`` is ``whole``'s at ``rows``; the per-run fields are kept."""
    assert len(part) == len(rows)
    for name in PER_SAMPLE:
        assert torch.equal(getattr(part, name), getattr(whole, name)[rows]), name
    assert part.extra.keys() == whole.extra.keys()
    for key, value in whole.extra.items():
        assert torch.equal(part.extra[key], value[rows]), key
    assert part.targeted == whole.targeted and part.seconds == whole.seconds


def test_every_kind_of_index_selects_every_per_sample_field():
    whole, _ = _result()
    whole.measure()
    mask = torch.tensor([True, False, True, False, False, True])
    cases = [
        (2, [2]), (-1, [5]), (np.int64(3), [3]), (torch.tensor(4), [4]),
        (slice(1, 4), [1, 2, 3]), (slice(None, None, 2), [0, 2, 4]), (slice(None, None, -2), [5, 3, 1]),
        (slice(9, 12), []), (mask, [0, 2, 5]), (mask.tolist(), [0, 2, 5]), (mask.numpy(), [0, 2, 5]),
        (torch.tensor([4, 0, 4]), [4, 0, 4]), (torch.tensor([-1, -2]), [5, 4]), ([1, 3], [1, 3]),
        (np.array([0, 1]), [0, 1]), ([], []),
    ]
    for index, rows in cases:
        part = whole[index]
        assert isinstance(part, AttackResult)
        _same(part, whole, rows)
    assert len(whole) == 6 and [len(r) for r in whole] == [1] * 6
    assert torch.equal(torch.cat([r.x_adv for r in whole]), whole.x_adv)
    joined = AttackResult.concat([whole[:2], whole[2:]])  # (their seconds add up: each keeps the whole's)
    for name in PER_SAMPLE:
        assert torch.equal(getattr(joined, name), getattr(whole, name))
    summary = whole[mask].summary()
    assert summary["samples"] == 3 and summary["l2"] == pytest.approx(float(whole.l2[mask].mean()))


def test_segmentation_extras_are_selected_too():
    torch.manual_seed(0)
    unet = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1)).eval()
    x = torch.rand(3, 1, 8, 8)
    target = torch.zeros(3, 8, 8, dtype=torch.long)
    whole = SegmentationJSMA(unet, theta=1.0, gamma=0.05)(x, target=target)
    assert whole.extra  # (per-pixel accuracy etc.)
    _same(whole[[2, 0]], whole, [2, 0])


def test_a_deferred_adversarial_prediction_runs_once_for_the_whole_batch():
    whole, model = _result()
    before = type(model).calls
    part = whole[torch.tensor([True, True, False, False, False, True])]
    single = whole[3]
    assert type(model).calls == before  # selecting runs nothing
    assert "not evaluated yet" in repr(part)
    success = part.success
    assert type(model).calls == before + 1  # the whole batch's prediction, once
    assert torch.equal(success, whole.success[[0, 1, 5]]) and torch.equal(single.pred_after, whole.pred_after[3:4])
    assert type(model).calls == before + 1


def test_selections_pickle_move_and_leave_the_whole_as_it_was():
    whole, _ = _result()
    part = whole[1:5]
    for restored in (pickle.loads(pickle.dumps(part)), copy.deepcopy(part)):
        _same(restored, whole, [1, 2, 3, 4])
    buffer = io.BytesIO()
    torch.save(whole[[0, 2]], buffer)
    buffer.seek(0)
    _same(torch.load(buffer, weights_only=False), whole, [0, 2])
    moved = whole[torch.tensor([5, 1])].to("cpu")
    _same(moved, whole, [5, 1])
    moved = whole[2].to(torch.device("cpu"))
    _same(moved, whole, [2])
    x_adv = whole.x_adv.clone()
    whole[[0, 1]].x_adv.add_(1.0)  # an index tensor selects a copy
    assert torch.equal(whole.x_adv, x_adv)


@pytest.mark.parametrize(("index", "error", "message"), [
    (6, IndexError, "index 6 is out of range for an AttackResult of 6 samples (expected -6 <= index < 6)"),
    (-7, IndexError, "index -7 is out of range for an AttackResult of 6 samples (expected -6 <= index < 6)"),
    (torch.tensor([0, 9]), IndexError, "index 9 is out of range for an AttackResult of 6 samples"),
    (torch.tensor([-8, 1]), IndexError, "index -8 is out of range for an AttackResult of 6 samples"),
    (torch.ones(4, dtype=torch.bool), IndexError, "a bool mask must have shape (6,) to select samples of this "
                                                  "AttackResult, got (4,)"),
    (torch.zeros(2, 2, dtype=torch.long), IndexError, "got a tensor of shape (2, 2)"),
    (1.5, TypeError, "AttackResult indices must be an int, a slice, a bool mask of shape (B,) or a long tensor or "
                     "sequence of sample indices, got 1.5 (float)"),
    (torch.tensor([0.0]), TypeError, "got a torch.float32 tensor"),
    ("x_adv", TypeError, "got 'x_adv' (str)"),
    (["a"], TypeError, "got ['a']"),
    (True, TypeError, "got True (bool)"),
])
def test_a_bad_index_is_refused_in_one_line(index, error, message):
    whole, _ = _result()
    with pytest.raises(error) as err:
        whole[index]
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_result_whose_x_adv_was_cut_by_the_caller_cannot_be_indexed():
    whole, _ = _result()
    whole.x_adv = whole.x_adv[:2]  # (a caller may keep only some adversarial inputs)
    assert len(whole) == 6
    with pytest.raises(IndexError, match="x_adv holds 2 inputs for the 6 samples of this result"):
        whole[0]
