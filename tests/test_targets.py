"""salmap.targets: every targeting mode and segmentation goal, decided in one place."""

import re

import numpy as np
import pytest
import torch

from salmap.attacks import all_other_targets, random_targets
from salmap.targets import (
    already_reached,
    classifier_targets,
    expand,
    least_likely,
    main_class,
    next_positions,
    rows_per_sample,
    segmentation_goal,
)


def test_random_targets_never_true_class_and_seeded():
    y = torch.arange(17).repeat(20)
    t1, t2 = random_targets(y, 17, seed=5), random_targets(y, 17, seed=5)
    assert torch.equal(t1, t2)
    assert (t1 != y).all() and int(t1.max()) < 17 and int(t1.min()) >= 0
    assert len(torch.unique(t1)) == 17
    assert not torch.equal(t1, random_targets(y, 17, seed=6))


def test_all_other_targets_grid():
    x = torch.rand(3, 1, 2, 2)
    y = torch.tensor([0, 2, 1])
    xr, yr, t = all_other_targets(x, y, 3)
    assert xr.shape[0] == 6 and torch.equal(yr, torch.tensor([0, 0, 2, 2, 1, 1]))
    assert torch.equal(t, torch.tensor([1, 2, 0, 1, 0, 2]))
    assert torch.equal(xr[2], x[1])
    with pytest.raises(ValueError, match="num_classes"):
        all_other_targets(x, y, 1)


def test_classifier_modes_known_answers():
    y = torch.tensor([0, 3, 9])
    logits = torch.tensor([[0.0, -1.0, 2.0] + [0.0] * 7, [5.0] * 9 + [-3.0], [1.0, 1.0, -2.0, -2.0] + [0.0] * 6])
    assert classifier_targets("none", y, 10) is None
    assert classifier_targets("next", y, 10).tolist() == [1, 4, 0]
    assert classifier_targets("least-likely", y, 10, logits=logits).tolist() == [1, 9, 2]  # ties: smaller index
    assert least_likely(logits).tolist() == [1, 9, 2]
    assert torch.equal(classifier_targets("random", y, 10, seed=4), random_targets(y, 10, seed=4))
    with pytest.raises(ValueError, match="clean logits"):
        classifier_targets("least-likely", y, 10)
    with pytest.raises(ValueError, match="targets must be one of"):
        classifier_targets("nearest", y, 10)


def test_expand_all_is_the_grid_and_keeps_the_source():
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([1, 0])
    rows = expand("all", x, y, 3)
    assert rows.source.tolist() == [0, 0, 1, 1] and rows.target.tolist() == [0, 2, 1, 2]
    assert rows_per_sample("all", 3) == 2 and rows_per_sample("next", 3) == 1
    single = expand("next", x, y, 3)
    assert single.target.tolist() == [2, 1] and single.source.tolist() == [0, 1]


def test_already_reached_for_labels_and_masks():
    assert already_reached(torch.tensor([1, 2]), torch.tensor([1, 3])).tolist() == [True, False]
    masks = torch.zeros(2, 2, 2, dtype=torch.long)
    goal = masks.clone()
    goal[1, 0, 0] = 1
    assert already_reached(masks, goal).tolist() == [True, False]


def test_segmentation_goals_next_sample_wraps():
    masks = torch.zeros(3, 2, 2, dtype=torch.long)
    masks[0, 0, 0], masks[1, 0, 1], masks[2, 1, 1] = 1, 1, 1
    nxt = masks[next_positions(torch.arange(3), 3)]
    added = segmentation_goal("add", masks, nxt)
    assert added[0].tolist() == [[1, 1], [0, 0]]  # sample 0 gains sample 1's object
    assert added[2].tolist() == [[1, 0], [0, 1]]  # the last gains the first's
    assert segmentation_goal("hide", masks).sum() == 0
    with pytest.raises(ValueError, match="next samples' masks"):
        segmentation_goal("add", masks)


def test_relabel_main_class():
    masks = torch.tensor([[[0, 2], [2, 1]], [[0, 0], [0, 0]]])
    assert main_class(masks).tolist() == [2, 0]
    goal = segmentation_goal("relabel", masks, num_classes=4)
    assert goal[0].tolist() == [[0, 3], [3, 1]] and goal[1].tolist() == [[0, 0], [0, 0]]
    assert segmentation_goal("relabel", masks, num_classes=4, to=1)[0].tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="at least 3 classes"):
        segmentation_goal("relabel", masks, num_classes=2)
    with pytest.raises(ValueError, match="to must be a class"):
        segmentation_goal("relabel", masks, num_classes=4, to=7)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: all_other_targets(np.zeros((2, 1, 4, 4)), torch.tensor([0, 1]), 3), "x must be a tensor of inputs (B, ...), got ndarray"),
    (lambda: all_other_targets([[0.0]], torch.tensor([0]), 3), "x must be a tensor of inputs (B, ...), got list"),
    (lambda: random_targets(torch.tensor(3), 10, seed=0), "y must be a sequence of class indices (B,), got shape ()"),
    (lambda: random_targets(3, 10), "y must be a sequence of class indices (B,), got shape ()"),
    (lambda: random_targets(torch.tensor([1, 2]), 10, seed="a"), "seed must be an integer, got 'a'"),
    (lambda: random_targets(torch.tensor([1, 2]), 10, seed=-1), "seed must be in [0, 9223372036854775807], got -1"),
], ids=["grid-ndarray", "grid-list", "random-0d", "random-int", "random-seed-str", "random-seed-negative"])
def test_target_helpers_refuse_bad_input_in_one_line(call, message):
    """(were AttributeError, IndexError, TypeError and torch's RuntimeError; a negative seed was taken)"""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()
    assert random_targets([1, 2, 3], 10, seed=0).equal(random_targets(torch.tensor([1, 2, 3]), 10, seed=0))
