"""``salmap defend dae|block-switch|dae+block-switch|adv-train``: train a defense for a checkpoint, save the defended
model as a checkpoint folder, and evaluate it honestly (transfer and adaptive attacks).

The output folder is itself a checkpoint (``model.json`` + ``weights.safetensors``, loadable with
``salmap.models.load``) and holds ``evaluation.json``.
"""

from __future__ import annotations

import argparse
import difflib
import time
from typing import Any

from torch import nn

from salmap import data as datasets
from salmap import models, registry
from salmap.cli.common import (
    add_device_arg,
    add_model_options,
    bounds_of,
    check_model_input,
    load_model,
    model_options,
    output_folder,
    print_table,
    write_json,
)
from salmap.cli.flags import parse_spec
from salmap.defenses.adversarial import MODES, adversarial_training, recipe
from salmap.defenses.block_switch import train_block_switch
from salmap.defenses.combined import train_dae_block_switch
from salmap.defenses.denoiser import Purified, train_denoiser
from salmap.defenses.evaluation import (
    AttackSpec,
    check_trained,
    default_attacks,
    evaluate_defense,
    table_rows,
)
from salmap.training import classifier_accuracy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("defend", help="train a defense, save it, evaluate it (transfer and adaptive)",
                       description=__doc__)
    kinds = p.add_subparsers(dest="defense", metavar="DEFENSE", required=True)

    text = "denoising autoencoder purifier in front of the model"
    q = kinds.add_parser("dae", help=text, description=text)
    _common_args(q)
    _dae_args(q)
    q.set_defaults(func=run_dae)

    text = "block switching (Wang et al. 2019), K random channels"
    q = kinds.add_parser("block-switch", help=text, description=text)
    _common_args(q)
    _block_switch_args(q)
    q.set_defaults(func=run_block_switch)

    text = "denoising autoencoder in front of block switching (the seed repository's defense)"
    q = kinds.add_parser("dae+block-switch", help=text, description=text)
    _common_args(q)
    _block_switch_args(q)
    _dae_args(q)
    q.set_defaults(func=run_dae_block_switch)

    text = "adversarial training: goodfellow (FGSM, mixed loss), madry (PGD only) or trades (Zhang et al. 2019)"
    q = kinds.add_parser("adv-train", help=text, description=text)
    _common_args(q)
    q.add_argument("--mode", choices=list(MODES), default="goodfellow",
                   help="the paper whose training to follow (default goodfellow)")
    q.add_argument("--eps", type=float, default=None,
                   help="Linf radius (default: the mode's published MNIST value, 0.25 goodfellow, 0.3 madry/trades)")
    q.add_argument("--steps", type=int, default=None, help="attack steps (default 40 for madry and trades)")
    q.add_argument("--step", type=float, default=None, help="attack step size (default 0.01 for madry and trades)")
    q.add_argument("--alpha", type=float, default=None, help="goodfellow: weight of the clean loss (default 0.5)")
    q.add_argument("--beta", type=float, default=None, help="trades: weight of the KL term (default 6)")
    q.set_defaults(func=run_adv_train)


def _block_switch_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--channels", type=int, default=5, help="K, parallel channels (default 5, as in the paper)")
    q.add_argument("--split", type=int, default=None,
                   help="layers in a channel (default: the convolutional layers and the first fully connected one)")
    q.add_argument("--upper-epochs", type=int, default=None, help="epochs of round two (default --epochs)")
    q.add_argument("--freeze-channels", action="store_true",
                   help="round two trains the upper part only (the earlier variant)")


def _dae_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--width", type=int, default=32, help="autoencoder width (default 32)")
    q.add_argument("--noise-std", type=float, default=0.3, help="Gaussian training noise (default 0.3)")
    q.add_argument("--adversarial", choices=["none", "fgsm", "pgd"], default="fgsm",
                   help="also train on these adversarial examples of the model (default fgsm)")
    q.add_argument("--eps", type=float, default=0.3,
                   help="largest Linf radius of the autoencoder's adversarial examples (default 0.3)")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the trained checkpoint folder to defend")
    p.add_argument("--data", default="mnist-sample", help="dataset name or kind:PATH (default mnist-sample)")
    p.add_argument("--out", required=True, help="output folder: the defended checkpoint and evaluation.json")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("-n", "--num", type=int, default=200, help="test images to evaluate on (default 200)")
    p.add_argument("--attacks", action="append", default=None, metavar="LIST|NAME:KEY=VALUE,...",
                   help="evaluation attacks: a comma-separated list of the presets "
                        f"{', '.join(s.name for s in default_attacks())} or registered attack names "
                        f"({', '.join(_classifier_attacks())}, with their defaults), or one attack with "
                        "parameters such as pgd:eps=0.1,steps=20; repeatable (default: all presets)")
    p.add_argument("--pgd-steps", type=int, default=40, help="PGD iterations in the evaluation (default 40)")
    p.add_argument("--eot-samples", type=int, default=None,
                   help="EOT passes for randomised models (default: exact expectation over channels)")
    p.add_argument("--no-eval", action="store_true", help="train and save only")
    add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_model_options(p)


def _classifier_attacks() -> list[str]:
    return [n for n, e in registry.attacks().items() if "classification" in e.tasks]


def attack_specs(values: list[str] | None, pgd_steps: int = 40) -> list[AttackSpec]:
    """The ``--attacks`` values as evaluation specs (presets, registered names, ``NAME:KEY=VALUE,...``)."""
    presets = {s.name: s for s in default_attacks(pgd_steps=pgd_steps)}
    if not values:
        return list(presets.values())
    names = _classifier_attacks()
    specs: list[AttackSpec] = []
    for value in values:
        items = [value] if ":" in value else [v.strip() for v in value.split(",") if v.strip()]
        for item in items:
            name, params = parse_spec(item, "--attacks")
            if name in presets and not params:
                specs.append(presets[name])
                continue
            if name not in names:
                close = difflib.get_close_matches(name, [*presets, *names], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"--attacks must name presets {list(presets)} or classifier attacks {names}, "
                                 f"got {name!r}{hint}")
            entry = registry.get_attack(name)
            label = item if params else name
            specs.append(AttackSpec(label, name, params, targeted=not entry.untargeted or
                                    entry.default_targeting != "none"))
    return specs


def _load(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], datasets.Dataset, datasets.Dataset]:
    attack_specs(args.attacks, args.pgd_steps)  # a wrong --attacks fails before training
    model, meta = load_model(args.model, args.device, **model_options(args))
    train = datasets.load_dataset(args.data, "train")
    test = datasets.load_dataset(args.data, "test")
    check_model_input(model, test.x[:1].to(args.device), meta, args.data)
    check_trained(meta, train.num_classes, f"--model {args.model}")
    if args.num <= 0:
        raise ValueError(f"--num must be positive, got {args.num}")
    return model, meta, train, test


def run_dae(args: argparse.Namespace) -> int:
    model, meta, train, test = _load(args)
    bounds = bounds_of(meta)
    denoiser = models.build("dae", in_channels=int(train.x.shape[1]), width=args.width, bounds=bounds.tolist())
    denoiser = denoiser.to(args.device)
    adversarial = args.adversarial != "none"
    report = train_denoiser(
        denoiser, train.x.to(args.device), noise_std=args.noise_std,
        model=model if adversarial else None, y=train.y if adversarial else None,
        attack="fgsm" if not adversarial else args.adversarial, eps=args.eps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, bounds=bounds,
    )
    defended = Purified(model, denoiser, tuple(train.x.shape[1:]))
    settings = {"noise_std": args.noise_std, "adversarial": args.adversarial, "eps": args.eps}
    return _finish(args, "dae", defended, model, meta, test, report.seconds, settings)


def run_block_switch(args: argparse.Namespace) -> int:
    model, meta, train, test = _load(args)
    defended, report = train_block_switch(
        meta["arch"], train.x.to(args.device), train.y.to(args.device), channels=args.channels,
        split=args.split, epochs=args.epochs, upper_epochs=args.upper_epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, freeze_channels=args.freeze_channels,
    )
    settings = {"channels": args.channels, "split": args.split, "upper_epochs": args.upper_epochs,
                "freeze_channels": args.freeze_channels}
    return _finish(args, "block-switch", defended, model, meta, test, report.seconds, settings)


def run_dae_block_switch(args: argparse.Namespace) -> int:
    model, meta, train, test = _load(args)
    adversarial = args.adversarial != "none"
    defended, report = train_dae_block_switch(
        meta["arch"], train.x.to(args.device), train.y.to(args.device), protected=model if adversarial else None,
        channels=args.channels, split=args.split, freeze_channels=args.freeze_channels, width=args.width,
        noise_std=args.noise_std, attack=args.adversarial if adversarial else "fgsm", eps=args.eps,
        epochs=args.epochs, upper_epochs=args.upper_epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, bounds=bounds_of(meta),
    )
    settings = {"channels": args.channels, "split": args.split, "upper_epochs": args.upper_epochs,
                "freeze_channels": args.freeze_channels, "noise_std": args.noise_std,
                "adversarial": args.adversarial, "eps": args.eps}
    return _finish(args, "dae+block-switch", defended, model, meta, test, report.seconds, settings)


def run_adv_train(args: argparse.Namespace) -> int:
    model, meta, train, test = _load(args)
    arch = meta["arch"]
    defended = models.build(arch["name"], **arch.get("kwargs", {})).to(args.device)
    r = recipe(args.mode, args.eps, args.steps, args.step, args.alpha, args.beta)
    report = adversarial_training(
        defended, train.x.to(args.device), train.y.to(args.device), mode=args.mode, eps=r.eps, steps=r.steps,
        step=r.step, alpha=r.alpha, beta=r.beta, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, bounds=bounds_of(meta),
    )
    settings = {"mode": args.mode, "eps": r.eps, "steps": r.steps, "step": r.step, "alpha": r.alpha, "beta": r.beta}
    return _finish(args, "adv-train", defended, model, meta, test, report.seconds, settings)


def _finish(args: argparse.Namespace, kind: str, defended: nn.Module, model: nn.Module, meta: dict[str, Any],
            test: datasets.Dataset, train_seconds: float, settings: dict[str, Any]) -> int:
    """Save the defended checkpoint, evaluate it, write evaluation.json and print the table."""
    start = time.perf_counter()
    out = output_folder(args.out)
    accuracy = classifier_accuracy(defended, test.x.to(args.device), test.y.to(args.device))
    saved = {k: v for k, v in meta.items() if k not in ("arch", "metrics", "training", "format_version", "schema_version")}
    saved["metrics"] = {"test_accuracy": accuracy, "train_seconds": train_seconds}
    saved["defense"] = {"kind": kind, "base_model": args.model, "data": args.data, "epochs": args.epochs,
                        "seed": args.seed, **settings}
    models.save(defended.cpu(), out, saved)
    defended.to(args.device)
    print(f"{kind}: test accuracy {accuracy:.4f}, trained in {train_seconds:.1f} s; checkpoint written to {out}")
    if args.no_eval:
        return 0
    specs = attack_specs(args.attacks, args.pgd_steps)
    ds = test.subset(min(args.num, len(test)))
    report = evaluate_defense(
        defended, model, ds.x.to(args.device), ds.y.to(args.device), specs, bounds_of(meta),
        seed=args.seed, samples=args.eot_samples,
    )
    report.update(defense=kind, settings=settings, train_seconds=train_seconds, checkpoint=str(out),
                  eval_seconds=time.perf_counter() - start)
    path = write_json(out / "evaluation.json", report)
    rows = table_rows(kind, report, train_seconds)
    print_table(rows, ["defense", "attacks", "clean", *(s.name for s in specs), "train_s"])
    print(f"evaluation written to {path}")
    return 0
