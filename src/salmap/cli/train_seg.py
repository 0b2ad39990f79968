"""``salmap train --task segmentation``: train the zoo's unet on a segmentation dataset."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from salmap import data as datasets
from salmap import models
from salmap.cli.common import output_folder
from salmap.gradients import predict
from salmap.metrics import iou_per_class, mask_from_output
from salmap.training import TrainReport, fit, trained_meta


def segmentation_loss(binary: bool, weight: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-pixel loss: binary cross-entropy on a single logit channel, else cross-entropy
    (with per-class ``weight`` when given)."""
    if binary:
        return lambda out, y: nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype))
    return lambda out, y: nn.functional.cross_entropy(out, y, weight=None if weight is None else weight.to(out.device))


def class_weights(y: Tensor, num_classes: int) -> Tensor:
    """Inverse square-root class frequencies, mean 1: the background (most pixels) must not
    drown the ten digit classes of a multi-class set."""
    freq = torch.bincount(y.reshape(-1), minlength=num_classes).float().clamp(min=1)
    w = freq.rsqrt()
    return w * num_classes / w.sum()


def build_segmenter(name: str, train: datasets.Dataset, base: int = 8, depth: int = 3) -> tuple[nn.Module, dict[str, Any]]:
    """A zoo unet sized for ``train``; a two-class set gets one sigmoid logit channel."""
    if name != "unet":
        raise ValueError(f"model must be 'unet' for --task segmentation, got {name!r}")
    if train.task != "segmentation":
        raise ValueError(f"data must be a segmentation dataset (e.g. mnist-seg), got {train.name!r} ({train.task})")
    c = train.x.shape[1]
    binary = train.num_classes == 2
    model = models.build("unet", in_channels=int(c), num_classes=1 if binary else train.num_classes,
                         base=base, depth=depth)
    return model, {**trained_meta(train, "segmentation"), "output": "sigmoid" if binary else "softmax"}


def segmentation_metrics(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Any]:
    """Mean IoU, per-class IoU and pixel accuracy of ``model`` on ``(x, y)`` (pixels pooled)."""
    device = next(model.parameters()).device
    model.eval()
    pred = mask_from_output(predict(model, x.to(device), 64)).cpu()
    ious = iou_per_class(pred, y, num_classes)
    return {
        "mean_iou": float(ious.nanmean()),
        "iou_per_class": [None if v != v else float(v) for v in ious.tolist()],
        "pixel_accuracy": float((pred == y).float().mean()),
    }


def train_segmenter(
    model: nn.Module, train: datasets.Dataset, test: datasets.Dataset | None = None, epochs: int = 3,
    batch_size: int = 32, lr: float = 3e-3, seed: int = 0, progress: bool = True, cosine: bool = False,
) -> TrainReport:
    """Train a segmenter with Adam and a per-pixel loss; fill ``test_metrics`` when ``test`` is given.

    ``cosine`` decays the learning rate to zero over the run (see :func:`salmap.training.fit`).
    """
    binary = next(m for m in reversed(list(model.modules())) if isinstance(m, nn.Conv2d)).out_channels == 1
    weight = None if binary else class_weights(train.y, train.num_classes)
    report = fit(model, train.x, train.y, segmentation_loss(binary, weight), epochs, batch_size, lr, seed, progress,
                 desc="train unet", cosine=cosine)
    if test is not None:
        report.test_metrics = segmentation_metrics(model, test.x, test.y, test.num_classes)
    return report


def run_segmentation(args: argparse.Namespace) -> int:
    """Train a unet on ``args.data`` (``mnist-seg`` when the classification default is left)."""
    name = "mnist-seg" if args.data == "mnist-sample" else args.data
    train = datasets.load_dataset(name, "train")
    test = datasets.load_dataset(name, "test")
    torch.manual_seed(args.seed)  # the unet's initial weights come from --seed too
    model, meta = build_segmenter(args.model, train)
    model = model.to(args.device)
    report = train_segmenter(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed)
    meta.update(
        metrics={**report.test_metrics, "train_loss": report.train_loss, "seconds": report.seconds},
        training={"data": name, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "seed": args.seed},
    )
    folder = models.save(model.cpu(), output_folder(args.out), meta)
    m = report.test_metrics
    print(f"test mean IoU {m['mean_iou']:.4f} (pixel accuracy {m['pixel_accuracy']:.4f}) "
          f"after {args.epochs} epochs in {report.seconds:.1f} s")
    print(f"checkpoint written to {folder}")
    print(json.dumps({"mean_iou": m["mean_iou"]}))
    return 0
