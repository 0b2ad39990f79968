"""SegmentationJSMA's known answers on hand-made segmenters: the local domain and a region, the
maps' results and iterations, finished images dropping out, an output smaller than the input, the
goal helpers (hide, relabel, add a mask) and a binary model's predicted masks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from salmap.attacks import SegmentationJSMA
from salmap.attacks.jsma_seg import add_mask_of, hide_object, relabel_class
from salmap.metrics import mask_from_output

torch.set_num_threads(1)


class Identity(nn.Module):
    """Binary segmenter by hand: the logit of a pixel is ``x - 0.5``."""

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5


class Shared(nn.Module):
    """logit_j = (x_j - 0.5) + 0.8 (x_0 - 0.5) on a (B, 1, 1, 4) input: feature 0 raises every pixel."""

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5 + 0.8 * (x[..., :1] - 0.5)


def test_local_domain_changes_only_features_under_wrong_pixels() -> None:
    x = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[0, 1, 1, 0]]])
    # Without the local domain the map picks feature 0 (alpha 1.6 > 1), which turns pixel 0
    # (target 0) on and cannot be taken back: 3 of 4 pixels at most.
    loose = SegmentationJSMA(Shared(), pairs=False, local=False, required=1.0, gamma=1.0)(x, target=target)
    assert not bool(loose.success[0]) and float(loose.x_adv[0, 0, 0, 0]) == 1.0
    # With it only the features under the wrong pixels 1 and 2 may change: exactly those two.
    result = SegmentationJSMA(Shared(), pairs=False, required=1.0, gamma=1.0)(x, target=target)
    assert bool(result.success[0])
    assert result.x_adv.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


def test_a_region_is_the_domain_unless_local_is_asked_for() -> None:
    x = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[0, 1, 1, 0]]])
    region = torch.tensor([True, False, False, False]).reshape(1, 4)  # only feature 0, under no wrong pixel
    given = SegmentationJSMA(Shared(), pairs=False, region=region, gamma=1.0)(x, target=target)
    assert given.x_adv.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    both = SegmentationJSMA(Shared(), pairs=False, region=region, local=True, gamma=1.0)(x, target=target)
    assert torch.equal(both.x_adv, x) and int(both.iterations[0]) == 0


def test_known_answers_on_a_hand_made_segmenter() -> None:
    # logit = x - 0.5: a pixel is class 1 exactly when its own feature exceeds 0.5.
    x = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    for map_, pairs, iterations in (("masked", False, 4), ("jsma", True, 2), ("jsma", False, 4)):
        result = SegmentationJSMA(Identity(), map=map_, pairs=pairs, required=1.0, gamma=0.5)(x, target=target)
        assert bool(result.success[0])
        assert int(result.iterations[0]) == iterations
        expected = target[:, None].float()  # exactly the four target pixels go to 1
        torch.testing.assert_close(result.x_adv, expected)
        assert float(result.extra["pixel_accuracy"][0]) == 1.0
        assert float(result.extra["iou_target"][0]) == 1.0
        assert float(result.extra["pixel_accuracy_before"][0]) == 12 / 16
    # Hiding needs decreases, which the jsma map finds and the masked map (increase only) does not.
    x = target[:, None].float()
    hide = torch.zeros_like(target)
    assert bool(SegmentationJSMA(Identity(), required=1.0, gamma=0.25)(x, target=hide).success[0])
    assert not bool(SegmentationJSMA(Identity(), required=1.0, gamma=0.2)(x, target=hide).success[0])
    masked = SegmentationJSMA(Identity(), map="masked", required=1.0, gamma=0.5)(x, target=hide)
    assert not bool(masked.success[0]) and int(masked.l0[0]) == 0


def test_finished_images_drop_out_and_success_is_reached() -> None:
    # Two images: one already matches the target (no change), one must change.
    x = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, 0, 0] = 1
    result = SegmentationJSMA(Identity(), required=1.0, pairs=False)(x, target=target)
    assert result.success.tolist() == [True, True]
    assert result.iterations.tolist() == [0, 1]
    assert result.l0.tolist() == [0.0, 1.0]


def test_output_size_may_differ_from_input_size() -> None:
    class Pooled(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.avg_pool2d(x, 2) * 4 - 1.0

    x = torch.zeros(1, 1, 8, 8)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    for map_ in ("jsma", "masked"):
        result = SegmentationJSMA(Pooled(), map=map_, required=1.0, pairs=False)(x, target=target)
        assert bool(result.success[0]) and result.pred_after.shape == (1, 4, 4)
        assert (result.x_adv[0, 0, 2:, :] == 0).all() and (result.x_adv[0, 0, :, 2:] == 0).all()


def test_goal_helpers() -> None:
    mask = torch.tensor([[[0, 1, 2], [2, 2, 0]], [[3, 0, 0], [0, 1, 1]]])
    assert hide_object(mask).eq(0).all()
    assert hide_object(mask, classes=[2]).tolist() == [[[0, 1, 0], [0, 0, 0]], [[3, 0, 0], [0, 1, 1]]]
    obj = mask == 1
    assert hide_object(mask, object_mask=obj).tolist() == [[[0, 0, 2], [2, 2, 0]], [[3, 0, 0], [0, 0, 0]]]
    assert relabel_class(mask, torch.tensor([2, 1]), torch.tensor([5, 4])).tolist() == [
        [[0, 1, 5], [5, 5, 0]], [[3, 0, 0], [0, 4, 4]]]
    other = torch.tensor([[[0, 0, 0], [0, 0, 7]], [[0, 0, 0], [0, 0, 0]]])
    assert add_mask_of(mask, other).tolist() == [[[0, 1, 2], [2, 2, 7]], [[3, 0, 0], [0, 1, 1]]]
    with pytest.raises(ValueError, match="other must have the shape"):
        add_mask_of(mask, other[:1])


def test_predictions_are_masks_for_binary_models() -> None:
    out = torch.tensor([[[[1.0, -1.0], [0.5, -0.2]]]])
    assert mask_from_output(out).tolist() == [[[1, 0], [1, 0]]]
