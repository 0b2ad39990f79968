"""``salmap attack jsma-seg``: JSMA against a segmentation model, towards a goal mask per image.

Goals: ``hide`` (every object becomes background), ``relabel`` (the main object class of
each image becomes another class; multi-class models) and ``add`` (the objects of the
next image in the batch are added to the mask). Writes results.json (per-image pixel
accuracy, IoU with the target and with the original prediction, L0 %, L2, Linf,
iterations, seconds) and grid.png (input, prediction, target, adversarial input,
adversarial prediction, perturbation).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from salmap.attacks.jsma_seg import (
    SegmentationJSMA,
    add_mask_of,
    hide_object,
    outside,
    relabel_class,
)
from salmap.gradients import frozen, predict
from salmap.metrics import mask_from_output

GOALS = ("hide", "relabel", "add")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goal", choices=GOALS, default="hide",
                   help="hide the objects, relabel the main class, or add the next image's objects (default hide)")
    p.add_argument("--to", type=int, default=None,
                   help="relabel: the new class (default: the next object class after the main one)")
    p.add_argument("--map", choices=["jsma", "masked"], default="jsma",
                   help="saliency map: jsma (pixel-sum JSMA, default) or masked (the masked-gradient method)")
    p.add_argument("--theta", type=float, default=1.0, help="change of each chosen feature (default 1.0)")
    p.add_argument("--gamma", type=float, default=0.1, help="largest fraction of features changed (default 0.1)")
    p.add_argument("--required", type=float, default=0.99,
                   help="fraction of pixels that must match the target (default 0.99)")
    p.add_argument("--k", type=int, default=1, help="selections (pairs or features) per iteration (default 1)")
    p.add_argument("--single", action="store_true", help="single features instead of pairs (jsma map)")
    p.add_argument("--candidates", type=int, default=None, help="restrict the pair search to that many features")
    p.add_argument("--global-domain", action="store_true",
                   help="jsma map: let any feature change, not only those under the pixels that are still wrong "
                        "(the default without --region outside)")
    p.add_argument("--region", choices=["all", "outside"], default="all",
                   help="features that may change: all, or only outside the predicted objects (default all)")


def build(args: argparse.Namespace, model: Any, bounds: tuple[float, float]) -> SegmentationJSMA:
    return SegmentationJSMA(
        model, theta=args.theta, gamma=args.gamma, required=args.required, map=args.map, pairs=not args.single,
        k=args.k, candidates=args.candidates, local=False if args.global_domain else None,
        region=outside() if args.region == "outside" else None, bounds=bounds,
    )


def goal_targets(goal: str, pred: Tensor, num_classes: int, to: int | None = None) -> Tensor:
    """Target masks for a goal from the clean predictions ``pred`` ``(B, H, W)``."""
    if goal == "hide":
        return hide_object(pred)
    if goal == "add":
        return add_mask_of(pred, pred.roll(1, dims=0))
    if num_classes < 3:
        raise ValueError(f"--goal relabel needs a model with at least 3 classes, got {num_classes}")
    # The main object class of each image: its most frequent non-background class.
    counts = torch.nn.functional.one_hot(pred.flatten(1), num_classes).sum(dim=1)[:, 1:]
    source = counts.argmax(dim=1) + 1
    if to is None:
        new = 1 + source % (num_classes - 1)
    else:
        if not 0 <= to < num_classes or isinstance(to, bool):
            raise ValueError(f"--to must be a class in [0, {num_classes - 1}], got {to}")
        new = torch.full_like(source, to)
    return relabel_class(pred, source, new)


def run(args: argparse.Namespace) -> int:
    from salmap.cli.attack import run_batches
    from salmap.cli.common import (
        bounds_of,
        load_data,
        load_model,
        output_folder,
        print_table,
        write_json,
    )
    from salmap.evaluation.seg_figures import segmentation_grid

    model, meta = load_model(args.model, args.device)
    data = args.data
    if data == "mnist-sample":  # the classification default: use the set the segmenter was trained on
        data = (meta.get("training") or {}).get("data", "mnist-seg")
    ds = load_data(data, args.split, args.num)
    if ds.task != "segmentation":
        raise ValueError(f"--data must be a segmentation dataset for jsma-seg, got {data!r} ({ds.task})")
    x = ds.x.to(args.device)
    attack = build(args, model, bounds_of(meta))
    with frozen(model):
        clean = predict(model, x)
    if clean.dim() != 4:
        raise ValueError(f"--model must be a segmenter returning (B, classes, H, W), got output {tuple(clean.shape)}")
    pred = mask_from_output(clean)
    num_classes = 2 if clean.shape[1] == 1 else int(clean.shape[1])
    targets = goal_targets(args.goal, pred, num_classes, args.to)
    result = run_batches(attack, x, ds.y.to(args.device), targets, args.batch_size, f"jsma-seg {args.goal}")
    out = output_folder(args.out)
    per_image = result.seconds / max(len(result), 1)
    extra = result.extra
    rows = [
        {
            "index": i, "success": bool(result.success[i]),
            "pixel_accuracy": float(extra["pixel_accuracy"][i]),
            "pixel_accuracy_before": float(extra["pixel_accuracy_before"][i]),
            "iou_target": float(extra["iou_target"][i]), "iou_original": float(extra["iou_original"][i]),
            "budget_spent": bool(extra["budget_spent"][i]),
            "l0_percent": 100 * float(result.l0_fraction[i]), "l2": float(result.l2[i]),
            "linf": float(result.linf[i]), "iterations": int(result.iterations[i]),
        }
        for i in range(len(result))
    ]
    summary = {
        **result.summary(),
        "seconds_per_image": per_image,
        "l0_percent": 100 * float(result.l0_fraction.mean()),
        **{k: float(v.float().mean()) for k, v in extra.items()},
    }
    write_json(out / "results.json", {
        "attack": "jsma-seg", "goal": args.goal, "settings": repr(attack), "model": args.model, "data": data,
        "split": args.split, "summary": summary, "samples": rows,
    })
    captions = [f"acc {r['pixel_accuracy']:.3f}, L0 {r['l0_percent']:.2f}%" for r in rows]
    segmentation_grid(x.cpu(), pred.cpu(), targets.cpu(), result.x_adv.cpu(), result.pred_after.cpu(),
                      out / "grid.png", num_classes, title=f"jsma-seg {args.goal}: {attack!r}"[:160], captions=captions)
    columns = ["goal", "map", "success_rate", "pixel_accuracy", "iou_target", "iou_original", "l0_percent", "l2",
               "linf", "iterations", "seconds_per_image"]
    print_table([{"goal": args.goal, "map": args.map, **summary}], columns)
    print(f"results written to {out / 'results.json'} and {out / 'grid.png'}")
    return 0
