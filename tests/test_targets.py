"""Target helpers: random targets never the true class; the source-target grid."""

import pytest
import torch

from salmap.attacks import all_other_targets, random_targets


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
