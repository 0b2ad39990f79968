"""salmap attack NAME: run an attack on a checkpoint and a dataset; write results and pictures.

There is one sub-command per registered attack (salmap.registry, plugins included); its
flags are generated from the attack's parameters (salmap.cli.flags). Everything else
(loading, batching, targets, results.json, the picture grid) is shared.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from salmap import registry
from salmap.attacks import Attack, AttackResult, all_other_targets, random_targets
from salmap.cli import attack_seg
from salmap.cli.common import (
    add_model_data_args,
    bounds_of,
    load_data,
    load_model,
    model_options,
    print_table,
    write_json,
)
from salmap.cli.flags import add_entry_flags, entry_help, params_from_args
from salmap.cli.pipeline import add_run_flags
from salmap.progress import bar as progress_bar

#: classifier targeting modes this command runs (see :func:`attack_rows`)
TARGETING = ("none", "random", "next", "least-likely", "all")
#: parameters the command sets itself: the seed from --seed; strict_targets off, so that a
#: misclassified sample whose random target is its prediction is returned unchanged
RESERVED = frozenset({"seed", "strict_targets"})


def add_parser(sub: argparse._SubParsersAction) -> None:
    entries = registry.attacks()
    p = sub.add_parser("attack", help="run an attack and write results.json and pictures", description=__doc__)
    names = p.add_subparsers(dest="attack", metavar="ATTACK", required=True)
    for name, entry in entries.items():
        text = entry_help(entry)
        q = names.add_parser(name, help=text, description=text)
        add_model_data_args(q)
        add_run_flags(q)
        add_targeting_flags(q, entry)
        add_entry_flags(q.add_argument_group(f"{name} parameters"), entry, reserved=RESERVED)
        segmentation = "segmentation" in entry.tasks and "classification" not in entry.tasks
        q.set_defaults(func=attack_seg.run if segmentation else run_classifier_attack, entry=entry)


def add_targeting_flags(p: argparse.ArgumentParser, entry: registry.Entry) -> None:
    """``--targeted`` for classifier attacks, ``--goal`` (and ``--to``) for segmentation attacks."""
    if "segmentation" in entry.tasks and "classification" not in entry.tasks:
        goals = list(entry.targeting)
        p.add_argument("--goal", choices=goals, default=entry.default_targeting,
                       help="hide the objects, relabel the main class, or add the objects of the next selected "
                            f"image (default {entry.default_targeting})")
        if "relabel" in goals:
            p.add_argument("--to", type=int, default=None,
                           help="relabel: the new class (default: the next object class after the main one)")
        return
    modes = [m for m in TARGETING if m in entry.targeting]
    default = "none" if "none" in modes else entry.default_targeting if entry.default_targeting in modes else modes[0]
    p.add_argument(
        "--targeted", choices=modes, default=default,
        help="untargeted (none), a random other class, the next class (y+1 mod classes), the class of "
             "the lowest clean logit (least-likely, Kurakin et al. 2016), or every "
             f"other class in turn (all: the source-target grid of Papernot et al., K-1 attacks per image) "
             f"(default {default})",
    )


def build_attack(args: argparse.Namespace, model: Any, bounds: Any) -> Attack:
    """The attack of ``salmap attack NAME`` configured from the parsed flags."""
    entry: registry.Entry = args.entry
    params = params_from_args(entry, args, base={"seed": args.seed, "strict_targets": False})
    attack: Attack = entry.build(model, bounds=bounds, **params)
    return attack


def choose_targets(mode: str, y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode == "next":
        return (y + 1) % num_classes
    return random_targets(y, num_classes, seed=seed)


def attack_rows(
    mode: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The attacks to run for ``--targeted mode``: ``(x, y, targets, source index of each row)``.

    ``all`` repeats every image once per other class (the source-target grid); the other
    modes run each image once.
    """
    if mode == "all":
        source = torch.arange(x.shape[0], device=x.device).repeat_interleave(num_classes - 1)
        x, y, targets = all_other_targets(x, y, num_classes)
        return x, y, targets, source
    return x, y, choose_targets(mode, y, num_classes, seed), torch.arange(x.shape[0], device=x.device)


def run_batches(attack: Attack, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                batch_size: int, desc: str) -> AttackResult:
    """Run ``attack`` over ``x`` in batches with a progress bar; join the results."""
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    results = []
    for i in progress_bar(range(0, x.shape[0], batch_size), desc=desc, unit="batch"):
        sl = slice(i, i + batch_size)
        if targets is None:
            results.append(attack(x[sl], y=y[sl]))
        else:
            results.append(attack(x[sl], target=targets[sl]))
    return AttackResult.concat(results)


def run_classifier_attack(args: argparse.Namespace) -> int:
    from salmap.cli.pipeline import first_rows, legacy_summary, run_attack
    from salmap.metrics import pair_rates
    from salmap.plot import adversarial_grid, source_target_figures

    model, meta = load_model(args.model, args.device, **model_options(args))
    ds = load_data(args.data, args.split, args.num, image_size=args.image_size, model=model, meta=meta, labels=True)
    params = params_from_args(args.entry, args, base={"seed": args.seed, "strict_targets": False})
    ran = run_attack(args, model, meta, bounds_of(meta), ds, args.data, args.targeted, params)
    out = Path(args.out)
    summary = legacy_summary(ran.entry, ran.rows)
    keys = ("index", "label", "target", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after")
    rows = [{k: r[k] for k in keys} | ({"success_png": r["success_png"]} if "success_png" in r else {})
            for r in ran.rows]
    record: dict[str, Any] = {
        "attack": args.attack, "settings": repr(ran.attack), "model": args.model, "data": args.data,
        "split": args.split, "targeted": args.targeted, "summary": summary, "samples": rows,
    }
    pictures = [out / "grid.png"]
    if args.targeted == "all":
        labels = torch.tensor([r["label"] for r in rows])
        targets = torch.tensor([r["target"] for r in rows])
        success = torch.tensor([float(r["success"]) for r in rows])
        rates = pair_rates(labels, targets, success, ds.num_classes)
        l0 = pair_rates(labels, targets, torch.tensor([r["l0"] for r in rows]) / ds.x[0].numel(), ds.num_classes)
        record["pairs"] = {"success": rates.tolist(), "l0_fraction": l0.tolist()}
        ex = ran.examples
        lookup = {(r["index"], r["target"]): r["success"] for r in rows}
        ex_success = torch.tensor([lookup[(int(ran.plan.indices[int(p)]), int(t))]
                                   for p, t in zip(ex["position"], ex["target"], strict=True)])
        pictures += source_target_figures(rates, ex_success, ex["x_adv"], ds.y[ex["position"]], ex["target"],
                                          ex["position"], ds.x, out, ds.class_names, f"{args.attack} on {args.data}")
    write_json(out / "results.json", record)
    adversarial_grid(*first_rows(ran), out / "grid.png", class_names=ds.class_names,
                     title=f"{args.attack}: {ran.attack!r}")
    columns = ["clean_accuracy", "adversarial_accuracy", "success_rate", "l0", "l2", "linf", "l2_mean_success",
               "seconds"]
    print_table([{"attack": args.attack, **{k: summary[k] for k in columns}}], ["attack", *columns])
    if "png_lost" in summary:
        print(f"{summary['png_lost']} successful adversarial examples stop being adversarial once rounded to "
              "8-bit PNGs")
    resumed = f" ({ran.resumed} batches resumed from an earlier attempt)" if ran.resumed else ""
    print(f"results written{resumed} to {out / 'results.json'} and {', '.join(str(p) for p in pictures)}")
    return 0
