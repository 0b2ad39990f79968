"""``salmap train``: train a zoo model on a dataset and save a checkpoint folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import nn

from salmap import data as datasets
from salmap import models
from salmap._validate import check_number
from salmap.cli.checks import check_checkpoint_out, check_learning_rate
from salmap.cli.common import add_device_arg, output_folder
from salmap.training import train_classifier, trained_meta

#: Default epochs per task: the lenet reaches about 97.5% on mnist-sample in 12; the unet
#: reaches a test mean IoU above 0.9 on mnist-seg in SEGMENTATION_EPOCHS (README).
CLASSIFIER_EPOCHS = 12
SEGMENTATION_EPOCHS = 4


def classifiers() -> tuple[str, ...]:
    """The zoo's architectures ``train`` builds as classifiers (:func:`build_classifier`)."""
    return tuple(name for name in models.available() if name == "lenet" or name.startswith("resnet"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a zoo model and save a checkpoint", description=__doc__)
    p.add_argument("--data", default="mnist-sample", help="dataset name or kind:PATH (default mnist-sample)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize images (shorter side to N, centre crop N x N); folder: decoded batch by batch")
    p.add_argument("--model", default=None, help=f"zoo architecture: one of {list(classifiers())} for classification "
                   "(default lenet), unet for segmentation")
    p.add_argument("--task", default="classification", choices=["classification", "segmentation"])
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs (default {CLASSIFIER_EPOCHS} for classification, "
                        f"{SEGMENTATION_EPOCHS} for segmentation)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, decayed to 0 on a cosine (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--stem", choices=["standard", "small"], help="resnet stem (default: small for inputs <= 64 px)")
    add_device_arg(p)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.epochs is None:
        args.epochs = SEGMENTATION_EPOCHS if args.task == "segmentation" else CLASSIFIER_EPOCHS
    for flag, value, low, low_open in (("--epochs", args.epochs, 1, False), ("--batch-size", args.batch_size, 1, False),
                                       ("--lr", args.lr, 0.0, True)):  # named here, before any data is read
        check_number(flag, value, low=low, low_open=low_open, integer=flag != "--lr")
    check_learning_rate("--lr", args.lr)
    trainable = classifiers() if args.task == "classification" else ("unet",)
    args.model = args.model or ("lenet" if args.task == "classification" else "unet")
    if args.model not in trainable:
        raise ValueError(f"--model must be one of {list(trainable)} for --task {args.task}, got {args.model!r}")
    check_checkpoint_out(args.out, args.overwrite)  # (before any work: a checkpoint there is the user's)
    if args.task == "segmentation":
        from salmap.cli.train_seg import run_segmentation

        if args.image_size is not None:
            raise ValueError(f"--image-size applies to classification images, got {args.image_size} with --task segmentation")

        return run_segmentation(args)
    train = datasets.load_dataset(args.data, "train", image_size=args.image_size)
    test = datasets.load_dataset(args.data, "test", image_size=args.image_size)
    torch.manual_seed(args.seed)  # the initial weights come from --seed too
    try:
        model, meta = build_classifier(args.model, train, args.stem)
    except ValueError as err:  # e.g. lenet's input size: the flags that chose it
        raise ValueError(f"--model {args.model} cannot be built for --data {args.data} "
                         f"({'x'.join(str(n) for n in train.x.shape[1:])} images): {err} (--image-size N resizes them)"
                         ) from None
    model = model.to(args.device)
    report = train_classifier(
        model, train.x, train.y, test.x, test.y, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed,
    )
    meta.update(
        metrics={"test_accuracy": report.test_accuracy, "train_loss": report.train_loss, "seconds": report.seconds},
        training={"data": args.data, **({"image_size": args.image_size} if args.image_size else {}),
                  "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
    )
    folder = models.save(model.cpu(), output_folder(args.out), meta)
    print(f"test accuracy {report.test_accuracy:.4f} after {args.epochs} epochs in {report.seconds:.1f} s")
    print(f"checkpoint written to {folder}")
    print(json.dumps({"test_accuracy": report.test_accuracy}))
    return 0


def build_classifier(
    name: str, train: datasets.Dataset, stem: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A zoo classifier sized for ``train``'s images and classes, with its checkpoint metadata."""
    c, h, w = train.x.shape[1:]
    kwargs: dict = {"in_channels": int(c), "num_classes": train.num_classes}
    if name == "lenet":
        kwargs["input_size"] = [int(h), int(w)]
    elif name.startswith("resnet"):
        kwargs["stem"] = stem or ("small" if max(h, w) <= 64 else "standard")
    model = models.build(name, **kwargs)
    return model, trained_meta(train, "classification")
