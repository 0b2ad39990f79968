"""Segmentation targets: the vectorised majority-foreground class against a loop."""

from __future__ import annotations

import torch

from salmap.explain.targets import _majority_foreground, resolve_target


def loop_reference(pred: torch.Tensor) -> torch.Tensor:
    out = []
    for p in pred:
        counts = torch.bincount(p.flatten(), minlength=int(pred.max()) + 1)
        fg = counts[1:]
        out.append(int(fg.argmax()) + 1 if fg.numel() and fg.sum() > 0 else 0)
    return torch.tensor(out)


def test_majority_foreground_matches_loop():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (20, 6, 7), generator=gen)
    pred[3] = 0  # all background
    pred[4] = 0
    pred[4, :2, :2] = 3
    pred[5] = torch.tensor([0, 2, 1]).repeat(14)[:42].view(6, 7)  # tie 1 vs 2 -> smaller index
    got = _majority_foreground(pred)
    assert torch.equal(got, loop_reference(pred))
    assert got[3] == 0 and got[4] == 3 and got[5] == 1


def test_majority_foreground_all_zero_batch():
    assert torch.equal(_majority_foreground(torch.zeros(3, 2, 2, dtype=torch.long)), torch.zeros(3, dtype=torch.long))


def test_default_segmentation_target_mask_is_predicted_pixels():
    out = torch.zeros(1, 3, 2, 2)
    out[0, 2, 0, :] = 5.0
    out[0, 1, 1, 0] = 5.0
    tgt = resolve_target(out)
    assert tgt.classes.tolist() == [2]
    assert tgt.mask is not None and tgt.mask[0].tolist() == [[True, True], [False, False]]
    assert float(tgt.score(out)) == 10.0
