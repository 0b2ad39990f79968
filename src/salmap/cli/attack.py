"""``salmap attack NAME``: run an attack on a checkpoint and a dataset; write results and pictures.

Each attack registers an :class:`AttackSpec` in ``ATTACKS``: its own arguments and how
to build the attack object from them. Everything else (loading, batching, targets,
results.json, the picture grid) is shared.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from salmap.attacks import FGSM, PGD, Attack, AttackResult, all_other_targets, random_targets
from salmap.cli import attack_seg
from salmap.cli.common import (
    add_model_data_args,
    bounds_of,
    load_data,
    load_model,
    output_folder,
    print_table,
    write_json,
)


@dataclass
class AttackSpec:
    """How the command line offers one attack."""

    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace, Any, tuple[float, float]], Attack]
    #: a custom runner (e.g. segmentation) replacing the shared classifier runner
    runner: Callable[[argparse.Namespace], int] | None = None


def _fgsm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps", type=float, default=0.1, help="Linf step size (default 0.1)")


def _pgd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps", type=float, default=0.3, help="Linf radius (default 0.3)")
    p.add_argument("--step", type=float, default=None, help="step size (default eps/4)")
    p.add_argument("--steps", type=int, default=40, help="iterations (default 40)")
    p.add_argument("--no-random-start", action="store_true", help="start at the clean input (BIM)")


def _isi_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--indicator", choices=["relevance", "sensitivity"], default="relevance",
                   help="significance: LRP relevance or the gradient (default relevance)")
    p.add_argument("--norm", choices=["l0", "l2", "linf"], default="l0", help="which ISI form (default l0)")
    p.add_argument("--eps", type=float, default=0.1, help="step per iteration for l2 / linf (default 0.1)")
    p.add_argument("--max-iter", type=int, default=30, help="iterations per image (default 30)")
    p.add_argument("--n-features", type=int, default=None,
                   help="features changed per iteration for l0 / l2 (default 1 for l0, 10 for l2)")
    p.add_argument("--lrp-composite", default="epsilon",
                   help="LRP rules for --indicator relevance: epsilon, epsilon-plus, epsilon-alpha2-beta1")
    p.add_argument("--objective", choices=["logit", "margin"], default=None,
                   help="score lowered: the label's logit, or its margin over the runner-up "
                        "(default: logit untargeted, margin targeted)")


def _isi_build(a: argparse.Namespace, m: Any, b: tuple[float, float]) -> Attack:
    from salmap.attacks.isi import ISI

    return ISI(m, indicator=a.indicator, norm=a.norm, eps=a.eps, max_iter=a.max_iter, n_features=a.n_features,
               bounds=b, lrp_composite=a.lrp_composite, objective=a.objective)


def _jsma_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--theta", type=float, default=1.0, help="change per chosen feature, non-zero (default 1.0)")
    p.add_argument("--gamma", type=float, default=0.145,
                   help="largest fraction of features changed, in (0, 1] (default 0.145)")
    p.add_argument("--single", action="store_true", help="single-feature saliency map instead of pairs")
    p.add_argument("--probabilities", action="store_true", help="differentiate softmax outputs, not logits")
    p.add_argument("--candidates", type=int, default=None,
                   help="search pairs among this many most promising features only (default: exact search)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="rows of the pair matrix scored at a time per sample (default: automatic)")
    p.add_argument("--saturation", type=float, default=0.01,
                   help="features within this fraction of the bounds' range of the bound theta points to "
                        "start outside the search domain; 0: only features exactly at it (default 0.01)")


def _jsma_build(a: argparse.Namespace, m: Any, b: tuple[float, float]) -> Attack:
    from salmap.attacks.jsma import JSMA

    return JSMA(m, theta=a.theta, gamma=a.gamma, pairs=not a.single, probabilities=a.probabilities,
                candidates=a.candidates, chunk_size=a.chunk_size, bounds=b, saturation=a.saturation,
                strict_targets=False)  # a misclassified sample may have its prediction as target


ATTACKS: dict[str, AttackSpec] = {
    "jsma": AttackSpec(
        "Jacobian-based saliency map attack, pairwise or single-feature map (Papernot et al. 2016)",
        _jsma_args, _jsma_build,
    ),
    "jsma-seg": AttackSpec(
        "JSMA for segmentation models: make a segmenter predict a goal mask (hide / relabel / add)",
        attack_seg.add_args, attack_seg.build, runner=attack_seg.run,
    ),
    "fgsm": AttackSpec(
        "Fast Gradient Sign Method (Goodfellow et al. 2014)",
        _fgsm_args,
        lambda a, m, b: FGSM(m, eps=a.eps, bounds=b),
    ),
    "pgd": AttackSpec(
        "Projected gradient descent / iterative FGSM (Madry et al. 2017)",
        _pgd_args,
        lambda a, m, b: PGD(m, eps=a.eps, step=a.step, steps=a.steps, random_start=not a.no_random_start,
                            seed=a.seed, bounds=b),
    ),
    "isi": AttackSpec(
        "Input significance indicator attack, sensitivity or LRP relevance (Qiu et al. 2020)",
        _isi_args, _isi_build,
    ),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="run an attack and write results.json and pictures", description=__doc__)
    names = p.add_subparsers(dest="attack", metavar="ATTACK", required=True)
    for name, spec in ATTACKS.items():
        q = names.add_parser(name, help=spec.help, description=spec.help)
        add_model_data_args(q)
        q.add_argument(
            "--targeted", choices=["none", "random", "next", "all"], default="none",
            help="untargeted (none), a random other class, the next class (y+1 mod classes), or every "
                 "other class in turn (all: the source-target grid of Papernot et al., K-1 attacks per image)",
        )
        spec.add_args(q)
        q.set_defaults(func=spec.runner or run_classifier_attack, attack_spec=spec)


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


def run_classifier_attack(args: argparse.Namespace) -> int:
    from salmap.evaluation.figures import adversarial_grid

    model, meta = load_model(args.model, args.device)
    ds = load_data(args.data, args.split, args.num)
    attack = args.attack_spec.build(args, model, bounds_of(meta))
    x, y, targets, source = attack_rows(args.targeted, ds.x.to(args.device), ds.y.to(args.device),
                                        ds.num_classes, args.seed)
    result = run_batches(attack, x, y, targets, args.batch_size, args.attack)
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
    adversarial_grid(x.cpu(), result.x_adv.cpu(), y.cpu(), result.pred_before.cpu(), result.pred_after.cpu(),
                     out / "grid.png", class_names=ds.class_names, title=f"{args.attack}: {attack!r}")
    print_table([{"attack": args.attack, **{k: summary[k] for k in
                 ("clean_accuracy", "adversarial_accuracy", "success_rate", "l0", "l2", "linf", "seconds")}}],
                ["attack", "clean_accuracy", "adversarial_accuracy", "success_rate", "l0", "l2", "linf", "seconds"])
    print(f"results written to {out / 'results.json'} and {', '.join(str(p) for p in pictures)}")
    return 0


def grid_figures(result: AttackResult, y: torch.Tensor, targets: torch.Tensor, source: torch.Tensor,
                 ds: Any, out: Path, title: str) -> tuple[dict[str, Any], list[Path]]:
    """Success rate and mean L0 per (source, target) pair of a ``--targeted all`` run, with pictures.

    Writes ``pairs.png`` (success per pair) and, when every class has an image,
    ``source-target.png`` (Papernot et al.'s figure: the first image of each class attacked
    towards every other class). Returns the two ``(K, K)`` matrices as lists (NaN where no
    image) and the pictures written.
    """
    from salmap.evaluation.figures import pair_heatmap, pair_rates, source_target_grid

    k = ds.num_classes
    y, targets, source = y.cpu(), targets.cpu(), source.cpu()
    success = pair_rates(y, targets, result.success.cpu().float(), k)
    l0 = pair_rates(y, targets, result.l0_fraction.cpu(), k)
    written = [pair_heatmap(success, out / "pairs.png", ds.class_names,
                            title=f"{title}\nsuccess per source-target pair")]
    firsts = [int(source[(y == c).nonzero()[0, 0]]) for c in range(k) if (y == c).any()]
    if len(firsts) == k:
        rows = {c: (source == s).nonzero().flatten() for c, s in enumerate(firsts)}
        adversarial = {(c, int(targets[i])): result.x_adv[i].cpu() for c, r in rows.items() for i in r.tolist()}
        won = {(c, int(targets[i])): bool(result.success[i]) for c, r in rows.items() for i in r.tolist()}
        sources = torch.stack([ds.x[s] for s in firsts])
        written.append(source_target_grid(sources, adversarial, out / "source-target.png", ds.class_names, won,
                                          title=f"{title}\n(rows: source, columns: target)"))
    return {"success": success.tolist(), "l0_fraction": l0.tolist()}, written  # write_json: NaN as null
