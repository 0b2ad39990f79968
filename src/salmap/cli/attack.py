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
from tqdm.auto import tqdm

from salmap import registry
from salmap.attacks import Attack, AttackResult, all_other_targets, random_targets
from salmap.cli import attack_seg
from salmap.cli.common import (
    add_model_data_args,
    bounds_of,
    load_data,
    load_model,
    model_options,
    output_folder,
    print_table,
    write_json,
)
from salmap.cli.flags import add_entry_flags, entry_help, params_from_args

#: classifier targeting modes this command runs (see :func:`attack_rows`)
TARGETING = ("none", "random", "next", "all")
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
        help="untargeted (none), a random other class, the next class (y+1 mod classes), or every "
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
    for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, unit="batch", leave=False):
        sl = slice(i, i + batch_size)
        if targets is None:
            results.append(attack(x[sl], y=y[sl]))
        else:
            results.append(attack(x[sl], target=targets[sl]))
    return AttackResult.concat(results)


#: samples whose clean and adversarial inputs are kept for the picture of a streamed run
FIGURE_ROWS = 8


def stream_attack(
    attack: Attack, ds: Any, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, AttackResult]:
    """Attack ``ds`` one batch at a time (a ``folder:`` set is decoded per batch): memory is
    bounded by the batch. Only the first :data:`FIGURE_ROWS` samples' inputs are kept (for
    ``grid.png``); every other per-sample figure is. Returns ``(x kept, y, targets, source, result)``
    with ``result.x_adv`` holding the kept samples only."""
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    y_all = ds.y.to(args.device)
    targets_all = choose_targets(args.targeted, y_all, ds.num_classes, args.seed)
    results: list[AttackResult] = []
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in tqdm(range(0, len(ds), args.batch_size), desc=args.attack, unit="batch", leave=False):
        sl = slice(start, start + args.batch_size)
        xb = ds.x[sl].to(args.device)
        res = attack(xb, y=y_all[sl]) if targets_all is None else attack(xb, target=targets_all[sl])
        room = FIGURE_ROWS - sum(k.shape[0] for k, _ in kept)
        # copies, not views: a view would keep the whole batch's storage alive
        if room > 0:
            kept.append((xb[:room].clone(), res.x_adv[:room].clone()))
        res.x_adv = res.x_adv[: room if start else max(room, 1)].clone()  # one at least: num_features reads it
        results.append(res)
    result = AttackResult.concat(results)
    x = torch.cat([k for k, _ in kept])
    source = torch.arange(len(ds), device=y_all.device)
    return x, y_all, targets_all, source, result


def run_classifier_attack(args: argparse.Namespace) -> int:
    from salmap.plot import adversarial_grid

    model, meta = load_model(args.model, args.device, **model_options(args))
    ds = load_data(args.data, args.split, args.num, image_size=args.image_size, model=model, meta=meta)
    attack = build_attack(args, model, bounds_of(meta))
    if args.targeted == "all":  # the source-target grid needs every row's adversarial input
        x, y, targets, source = attack_rows(args.targeted, ds.x.to(args.device), ds.y.to(args.device),
                                            ds.num_classes, args.seed)
        result = run_batches(attack, x, y, targets, args.batch_size, args.attack)
    else:
        x, y, targets, source, result = stream_attack(attack, ds, args)
    out = output_folder(args.out)
    summary = result.summary()
    clean_acc = float((result.pred_before == y).float().mean())
    adv_acc = float((result.pred_after == y).float().mean())
    summary.update(clean_accuracy=clean_acc, adversarial_accuracy=adv_acc)
    rows = [
        {
            "index": int(source[i]), "label": int(y[i]), "target": None if targets is None else int(targets[i]),
            "success": bool(result.success[i]), "l0": float(result.l0[i]), "l2": float(result.l2[i]),
            "linf": float(result.linf[i]), "iterations": int(result.iterations[i]),
            "pred_before": int(result.pred_before[i]), "pred_after": int(result.pred_after[i]),
        }
        for i in range(len(result))
    ]
    record = {
        "attack": args.attack, "settings": repr(attack), "model": args.model, "data": args.data,
        "split": args.split, "targeted": args.targeted, "summary": summary, "samples": rows,
    }
    pictures = [out / "grid.png"]
    if targets is not None and args.targeted == "all":
        record["pairs"], written = grid_figures(result, y, targets, source, ds, out, f"{args.attack} on {args.data}")
        pictures += written
    write_json(out / "results.json", record)
    shown = min(x.shape[0], result.x_adv.shape[0])
    adversarial_grid(x[:shown].cpu(), result.x_adv[:shown].cpu(), y[:shown].cpu(), result.pred_before[:shown].cpu(),
                     result.pred_after[:shown].cpu(),
                     out / "grid.png", class_names=ds.class_names, title=f"{args.attack}: {attack!r}")
    print_table([{"attack": args.attack, **{k: summary[k] for k in
                 ("clean_accuracy", "adversarial_accuracy", "success_rate", "l0", "l2", "linf", "seconds")}}],
                ["attack", "clean_accuracy", "adversarial_accuracy", "success_rate", "l0", "l2", "linf", "seconds"])
    print(f"results written to {out / 'results.json'} and {', '.join(str(p) for p in pictures)}")
    return 0


def grid_figures(result: AttackResult, y: torch.Tensor, targets: torch.Tensor, source: torch.Tensor,
                 ds: Any, out: Path, title: str) -> tuple[dict[str, Any], list[Path]]:
    """Success rate and mean L0 per (source, target) pair of a ``--targeted all`` run, with pictures.

    Writes the pictures of :func:`salmap.plot.source_target_figures`. Returns the two
    ``(K, K)`` matrices as lists (NaN where no image) and the pictures written.
    """
    from salmap.metrics import pair_rates
    from salmap.plot import source_target_figures

    k = ds.num_classes
    y, targets, source = y.cpu(), targets.cpu(), source.cpu()
    success = pair_rates(y, targets, result.success.cpu().float(), k)
    l0 = pair_rates(y, targets, result.l0_fraction.cpu(), k)
    written = source_target_figures(success, result.success, result.x_adv, y, targets, source, ds.x, out,
                                    ds.class_names, title)
    return {"success": success.tolist(), "l0_fraction": l0.tolist()}, written  # write_json: NaN as null
