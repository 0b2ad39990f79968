"""``salmap attack jsma-seg``: JSMA against a segmentation model, towards a goal mask per image.

Goals: ``hide`` (every object becomes background), ``relabel`` (the main object class of
each image becomes another class; multi-class models) and ``add`` (the objects of the
next selected image are added to the mask; the last wraps to the first). Writes results.json (per-image pixel
accuracy, IoU with the target and with the original prediction, L0 %, L2, Linf,
iterations, seconds) and grid.png (input, prediction, target, adversarial input,
adversarial prediction, perturbation).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from salmap.gradients import frozen, predict
from salmap.metrics import mask_from_output
from salmap.targets import SEGMENTATION_GOALS, next_positions, segmentation_goal

GOALS = SEGMENTATION_GOALS


def goal_targets(goal: str, pred: Tensor, num_classes: int, to: int | None = None) -> Tensor:
    """Target masks for a goal from the clean predictions ``pred`` ``(B, H, W)`` of the selected samples,
    in order: ``add`` adds the objects of the next selected sample (the last wraps to the first).
    See :mod:`salmap.targets`."""
    nxt = pred[next_positions(torch.arange(pred.shape[0]), max(int(pred.shape[0]), 1)).to(pred.device)]
    try:
        return segmentation_goal(goal, pred, nxt, num_classes, to)
    except ValueError as err:
        raise ValueError(f"--{'to' if 'to must' in str(err) else 'goal'}: {err}") from None


def run(args: argparse.Namespace) -> int:
    from salmap.cli.attack import build_attack, run_batches
    from salmap.cli.common import (
        bounds_of,
        load_data,
        load_model,
        model_options,
        output_folder,
        print_table,
        write_json,
    )
    from salmap.plot import segmentation_grid

    model, meta = load_model(args.model, args.device, **model_options(args))
    data = args.data
    if data == "mnist-sample":  # the classification default: use the set the segmenter was trained on
        data = (meta.get("training") or {}).get("data", "mnist-seg")
    ds = load_data(data, args.split, args.num)
    if ds.task != "segmentation":
        raise ValueError(f"--data must be a segmentation dataset for jsma-seg, got {data!r} ({ds.task})")
    x = ds.x.to(args.device)
    attack = build_attack(args, model, bounds_of(meta))
    with frozen(model):
        clean = predict(model, x)
    if clean.dim() != 4:
        raise ValueError(f"--model must be a segmenter returning (B, classes, H, W), got output {tuple(clean.shape)}")
    pred = mask_from_output(clean)
    num_classes = 2 if clean.shape[1] == 1 else int(clean.shape[1])
    targets = goal_targets(args.goal, pred, num_classes, getattr(args, "to", None))
    result = run_batches(attack, x, ds.y.to(args.device), targets, args.batch_size, f"{args.attack} {args.goal}")
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
        "attack": args.attack, "goal": args.goal, "settings": repr(attack), "model": args.model, "data": data,
        "split": args.split, "summary": summary, "samples": rows,
    })
    captions = [f"acc {r['pixel_accuracy']:.3f}, L0 {r['l0_percent']:.2f}%" for r in rows]
    segmentation_grid(x.cpu(), pred.cpu(), targets.cpu(), result.x_adv.cpu(), result.pred_after.cpu(),
                      out / "grid.png", num_classes, title=f"{args.attack} {args.goal}: {attack!r}"[:160], captions=captions)
    columns = ["goal", "map", "success_rate", "pixel_accuracy", "iou_target", "iou_original", "l0_percent", "l2",
               "linf", "iterations", "seconds_per_image"]
    print_table([{"goal": args.goal, "map": getattr(attack, "map", ""), **summary}], columns)
    print(f"results written to {out / 'results.json'} and {out / 'grid.png'}")
    return 0
