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
from pathlib import Path

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
    from salmap.cli.common import (
        bounds_of,
        check_model_input,
        load_data,
        load_model,
        model_options,
        print_table,
        write_json,
    )
    from salmap.cli.flags import params_from_args
    from salmap.cli.pipeline import run_attack
    from salmap.plot import segmentation_grid

    model, meta = load_model(args.model, args.device, **model_options(args))
    data = args.data
    if data == "mnist-sample":  # the classification default: use the set the segmenter was trained on
        data = (meta.get("training") or {}).get("data", "mnist-seg")
    ds = load_data(data, args.split, args.num)
    check_model_input(model, ds.x[:1].to(args.device), meta, f"--data {data}")
    if ds.task != "segmentation":
        raise ValueError(f"--data must be a segmentation dataset for {args.attack}, got {data!r} ({ds.task})")
    with frozen(model):
        probe = predict(model, ds.x[:1].to(args.device))
    if probe.dim() != 4:
        raise ValueError(f"--model must be a segmenter returning (B, classes, H, W), got output {tuple(probe.shape)}")
    num_classes = 2 if probe.shape[1] == 1 else int(probe.shape[1])
    to = getattr(args, "to", None)
    goal_targets(args.goal, mask_from_output(probe), num_classes, to)  # a goal the model cannot have fails now
    params = params_from_args(args.entry, args, base={"seed": args.seed})
    ran = run_attack(args, model, meta, bounds_of(meta), ds, data, args.goal, params, to=to)
    out = Path(args.out)
    features = int(ds.x[0].numel())
    rows = [
        {
            "index": int(r["index"]), "success": r["success"], "pixel_accuracy": r["pixel_accuracy"],
            "pixel_accuracy_before": r["pixel_accuracy_before"], "iou_target": r["iou_target"],
            "iou_original": r["iou_original"], "budget_spent": bool(r["budget_spent"]),
            "l0_percent": 100 * r["l0"] / features, "l2": r["l2"], "linf": r["linf"], "iterations": r["iterations"],
            **({"success_png": r["success_png"]} if "success_png" in r else {}),
        }
        for r in ran.rows
    ]
    e = ran.entry
    summary = {
        "samples": float(len(rows)), "success_rate": e["success_rate"], "l0": e["l0_mean"],
        "l0_fraction": e["l0_fraction_mean"], "l2": e["l2_mean"], "linf": e["linf_mean"],
        "iterations": e["iterations_mean"], "seconds": e["seconds"],
        "seconds_per_image": e["seconds"] / max(len(rows), 1), "l0_percent": 100 * e["l0_fraction_mean"],
        **{k[: -len("_mean")]: v for k, v in e.items() if k.endswith("_mean") and k[: -len("_mean")] in
           ("pixel_accuracy", "pixel_accuracy_before", "iou_target", "iou_original", "budget_spent")},
        **{k: v for k, v in e.items() if k.endswith(("_mean", "_median", "_success")) or k.startswith("png_")},
    }
    write_json(out / "results.json", {
        "attack": args.attack, "goal": args.goal, "settings": repr(ran.attack), "model": args.model, "data": data,
        "split": args.split, "summary": summary, "samples": rows,
    })
    ex = ran.examples
    keep = list(range(min(8, int(ex["position"].numel()))))
    captions = [f"acc {r['pixel_accuracy']:.3f}, L0 {r['l0_percent']:.2f}%" for r in rows[: len(keep)]]
    segmentation_grid(ds.x[ex["position"][keep]], ex["pred_before"][keep], ex["goal"][keep], ex["x_adv"][keep],
                      ex["pred_after"][keep], out / "grid.png", num_classes,
                      title=f"{args.attack} {args.goal}: {ran.attack!r}"[:160], captions=captions)
    columns = ["goal", "map", "success_rate", "pixel_accuracy", "iou_target", "iou_original", "l0_percent", "l2",
               "linf", "iterations", "seconds_per_image"]
    print_table([{"goal": args.goal, "map": getattr(ran.attack, "map", ""), **summary}], columns)
    print(f"results written to {out / 'results.json'} and {out / 'grid.png'}")
    return 0
