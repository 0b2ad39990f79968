"""mnist-seg and mnist-seg-multi: real digits, masks from strokes, deterministic, split-clean."""

from __future__ import annotations

import torch

from salmap import data
from salmap.data import mnist_seg
from salmap.metrics import iou_per_class, mean_iou, pixel_accuracy, segmentation_iou


def test_shapes_classes_and_task() -> None:
    ds = data.load_dataset("mnist-seg", "test")
    assert ds.task == "segmentation" and ds.class_names == ["background", "digit"]
    assert ds.x.shape == (1000, 1, 64, 64) and ds.y.shape == (1000, 64, 64)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.long
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert set(ds.y.unique().tolist()) == {0, 1}
    multi = data.load_dataset("mnist-seg-multi", "test")
    assert multi.num_classes == 11 and set(multi.y.unique().tolist()) == set(range(11))
    assert torch.equal(multi.x, ds.x) and torch.equal(multi.y > 0, ds.y.bool())
    assert "mnist-seg" in data.available() and "mnist-seg-multi" in data.available()
    assert len(data.load_dataset("mnist-seg", "all")) == 5000


def test_masks_come_from_real_digit_strokes() -> None:
    # Every test image holds one or two test digits of mnist-sample, pasted where its mask is.
    ds = data.load_dataset("mnist-seg-multi", "test")
    digits = data.load_dataset("mnist-sample", "test")
    x, y = ds.x[:, 0], ds.y
    for i in range(20):
        classes = [int(c) for c in y[i].unique() if c > 0]
        assert 1 <= len(classes) <= 2
        for c in classes:
            rows, cols = torch.nonzero(y[i] == c, as_tuple=True)
            # Mask pixels are bright digit strokes (threshold) and the digit has its class label.
            assert (x[i][rows, cols] > mnist_seg.STROKE_THRESHOLD).all()
            candidates = digits.x[digits.y == c - 1, 0]
            top, left = int(rows.min()), int(cols.min())
            # Some test digit of that class reproduces the mask exactly at some placement.
            found = False
            for dr in range(0, 28):
                for dc in range(0, 28):
                    r0, c0 = top - dr, left - dc
                    if not (0 <= r0 <= 36 and 0 <= c0 <= 36):
                        continue
                    window = (y[i, r0 : r0 + 28, c0 : c0 + 28] == c)
                    strokes = candidates > mnist_seg.STROKE_THRESHOLD
                    if (strokes == window).all(dim=(1, 2)).any():
                        found = True
                        break
                if found:
                    break
            assert found, f"image {i}: class {c} mask is not the strokes of a test digit"


def test_deterministic_and_cached_copies() -> None:
    a = data.load_dataset("mnist-seg", "test")
    a.x.zero_()  # a caller editing its copy must not change the set
    b = data.load_dataset("mnist-seg", "test")
    assert b.x.abs().sum() > 0
    mnist_seg._generate.cache_clear()
    c = data.load_dataset("mnist-seg", "test")
    assert torch.equal(b.x, c.x) and torch.equal(b.y, c.y)
    assert not torch.equal(c.x[:100], data.load_dataset("mnist-seg", "train").x[:100])


def test_clutter_is_background() -> None:
    ds = data.load_dataset("mnist-seg", "test")
    bright_background = (ds.x[:, 0] > 0.5) & (ds.y == 0)
    assert bright_background.any()  # strokes and speckles that are not digits
    assert (ds.y.float().mean(dim=(1, 2)) > 0.005).all()  # every image has a digit


def test_segmentation_metrics_known_answers() -> None:
    pred = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [2, 2]]])
    target = torch.tensor([[[0, 1], [0, 1]], [[0, 0], [2, 1]]])
    torch.testing.assert_close(pixel_accuracy(pred, target), torch.tensor([0.75, 0.75]))
    # image 0: class 0 IoU 1/2, class 1 IoU 2/3; image 1: class 0 1, class 1 0/1, class 2 1/2.
    torch.testing.assert_close(segmentation_iou(pred, target, 3), torch.tensor([(1 / 2 + 2 / 3) / 2, 1.5 / 3]))
    ious = iou_per_class(pred, target, 4)
    torch.testing.assert_close(ious[:3], torch.tensor([3 / 4, 2 / 4, 1 / 2]))
    assert torch.isnan(ious[3])
    assert abs(mean_iou(pred, target, 4) - (3 / 4 + 2 / 4 + 1 / 2) / 3) < 1e-6
