"""``salmap defend dae|block-switch|dae+block-switch|adv-train``: train a defense for a classifier, save the defended
model as a checkpoint folder, and evaluate it honestly (transfer and adaptive attacks).

The output folder is itself a checkpoint (``model.json`` + ``weights.safetensors``, or ``model.ts`` for a
model without a zoo architecture: :mod:`salmap.defenses.saving`; loadable with ``salmap.models.load``)
and holds ``evaluation.json``. The evaluation runs through the same
plan -> execute -> store steps as ``salmap attack`` and ``salmap evaluate`` (rows in
``results.jsonl``, ``summary.json``): a rerun with the same arguments resumes, reusing the
defense an interrupted run trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salmap import data as datasets
from salmap import models
from salmap._validate import check_number
from salmap.cli.checks import take
from salmap.cli.common import (
    bounds_of,
    check_model_input,
    load_model,
    model_options,
    print_table,
    write_json,
)
from salmap.cli.defend_flags import (
    DEFAULT_NUM,
    adv_train_args,
    attack_specs,
    block_switch_args,
    check_flags,
    common_args,
    dae_args,
    fit_attacks,
)
from salmap.defenses.adversarial import adversarial_training, recipe
from salmap.defenses.block_switch import sequential_layers, train_block_switch
from salmap.defenses.combined import train_dae_block_switch
from salmap.defenses.denoiser import Purified, train_denoiser
from salmap.defenses.evaluation import (
    plan_defense,
    run_defense,
    table_rows,
)
from salmap.defenses.saving import (
    base_script,
    check_defensible,
    restore,
    save_defended,
    trainable_copy,
)
from salmap.defenses.specs import measured_accuracy, model_accuracy
from salmap.evaluation.store import RunStore
from salmap.frozen import set_eval
from salmap.models.scripted import TRACED

#: in the output folder: the trained defense's accuracy and seconds, written once its checkpoint is saved
TRAINING = "training.json"
#: test images a TorchScript defended model must classify exactly as the eager one does
CHECK = 256


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("defend", help="train a defense, save it, evaluate it (transfer and adaptive)",
                       description=__doc__)
    kinds = p.add_subparsers(dest="defense", metavar="DEFENSE", required=True)
    for name, (text, flags, func) in _kinds().items():
        q = kinds.add_parser(name, help=text, description=text)
        common_args(q)
        for add in flags:
            add(q)
        q.set_defaults(func=func)


def _kinds() -> dict[str, tuple[str, tuple[Callable[[argparse.ArgumentParser], None], ...],
                              Callable[[argparse.Namespace], int]]]:
    """Per defense: its help, its own flags and the function that trains it."""
    return {
        "dae": ("denoising autoencoder purifier in front of the model", (dae_args,), run_dae),
        "block-switch": ("block switching (Wang et al. 2019), K random channels", (block_switch_args,),
                         run_block_switch),
        "dae+block-switch": ("denoising autoencoder in front of block switching (the seed repository's defense)",
                             (block_switch_args, dae_args), run_dae_block_switch),
        "adv-train": ("adversarial training: goodfellow (FGSM, mixed loss), madry (PGD only) or trades "
                      "(Zhang et al. 2019)", (adv_train_args,), run_adv_train),
    }


def _load(args: argparse.Namespace, kind: str) -> tuple[nn.Module, dict[str, Any], datasets.Dataset, datasets.Dataset,
                                                     tuple[nn.Module, str] | None]:
    """The undefended model, its metadata, the train and test sets, and for a model without a zoo
    architecture the model as TorchScript and how it became so (:func:`base_script`; made now so that a
    model that cannot be saved fails before training, and used again when the defense is saved)."""
    check_flags(args)
    if args.num is not None and args.num <= 0:
        raise ValueError(f"-n must be positive, got {args.num}")
    attack_specs(args.attacks, args.pgd_steps)  # a wrong --attacks fails before training
    name = f"--model {args.model}"
    model, meta = load_model(args.model, args.device, **model_options(args))
    check_defensible(kind, meta, name, getattr(args, "fine_tune", False), model)
    if getattr(args, "split", None) is not None and meta.get("arch"):  # the layers --split may cut after
        layers = sequential_layers(models.build(meta["arch"]["name"], **meta["arch"].get("kwargs", {})))
        check_number("--split", args.split, low=1, high=len(layers) - 1, integer=True)
    train = datasets.load_dataset(args.data, "train", image_size=args.image_size)
    test = datasets.load_dataset(args.data, "test", image_size=args.image_size)
    check_model_input(model, test.x[:1].to(args.device), meta, f"--data {args.data}")
    args.num = take(args.num, len(test), args.data, "test", DEFAULT_NUM)
    accuracy, measured = model_accuracy(meta, model, test.x.to(args.device), test.y, train.num_classes, name)
    if measured:
        print(f"{name}: test accuracy {accuracy:.4f} measured on the {args.data} test split (its file records none)")
    script = None if meta.get("arch") else base_script(model, test.x[:CHECK].to(args.device), name)
    return model, meta, train, test, script


#: trains the defense on ``(undefended model, its metadata, training set)``: ``(defended, seconds)``
Trainer = Callable[[nn.Module, dict[str, Any], datasets.Dataset], tuple[nn.Module, float]]


def run_dae(args: argparse.Namespace) -> int:
    def train(model: nn.Module, meta: dict[str, Any], data: datasets.Dataset) -> tuple[nn.Module, float]:
        bounds = bounds_of(meta)
        torch.manual_seed(args.seed)  # the denoiser's initial weights come from --seed
        denoiser = models.build("dae", in_channels=int(data.x.shape[1]), width=args.width, bounds=bounds.tolist())
        denoiser = denoiser.to(args.device)
        adversarial = args.adversarial != "none"
        report = train_denoiser(
            denoiser, data.x.to(args.device), noise_std=args.noise_std,
            model=model if adversarial else None, y=data.y if adversarial else None,
            attack="fgsm" if not adversarial else args.adversarial, eps=args.eps, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, bounds=bounds,
        )
        return Purified(model, denoiser, tuple(data.x.shape[1:])), report.seconds

    settings = {"noise_std": args.noise_std, "adversarial": args.adversarial, "eps": args.eps}
    return defend(args, "dae", settings, train)


def run_block_switch(args: argparse.Namespace) -> int:
    def train(model: nn.Module, meta: dict[str, Any], data: datasets.Dataset) -> tuple[nn.Module, float]:
        defended, report = train_block_switch(
            meta["arch"], data.x.to(args.device), data.y.to(args.device), channels=args.channels,
            split=args.split, epochs=args.epochs, upper_epochs=args.upper_epochs, batch_size=args.batch_size,
            lr=args.lr, seed=args.seed, freeze_channels=args.freeze_channels,
        )
        return defended, report.seconds

    settings = {"channels": args.channels, "split": args.split, "upper_epochs": args.upper_epochs,
                "freeze_channels": args.freeze_channels}
    return defend(args, "block-switch", settings, train)


def run_dae_block_switch(args: argparse.Namespace) -> int:
    def train(model: nn.Module, meta: dict[str, Any], data: datasets.Dataset) -> tuple[nn.Module, float]:
        adversarial = args.adversarial != "none"
        defended, report = train_dae_block_switch(
            meta["arch"], data.x.to(args.device), data.y.to(args.device), protected=model if adversarial else None,
            channels=args.channels, split=args.split, freeze_channels=args.freeze_channels, width=args.width,
            noise_std=args.noise_std, attack=args.adversarial if adversarial else "fgsm", eps=args.eps,
            epochs=args.epochs, upper_epochs=args.upper_epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, bounds=bounds_of(meta),
        )
        return defended, report.seconds

    settings = {"channels": args.channels, "split": args.split, "upper_epochs": args.upper_epochs,
                "freeze_channels": args.freeze_channels, "noise_std": args.noise_std,
                "adversarial": args.adversarial, "eps": args.eps}
    return defend(args, "dae+block-switch", settings, train)


def run_adv_train(args: argparse.Namespace) -> int:
    check_flags(args)  # the flags named (--alpha), before the recipe checks its values
    r = recipe(args.mode, args.eps, args.steps, args.step, args.alpha, args.beta)

    def train(model: nn.Module, meta: dict[str, Any], data: datasets.Dataset) -> tuple[nn.Module, float]:
        torch.manual_seed(args.seed)  # the initial weights come from --seed
        defended = trainable_copy(model) if args.fine_tune else \
            models.build(meta["arch"]["name"], **meta["arch"].get("kwargs", {})).to(args.device)
        report = adversarial_training(
            defended, data.x.to(args.device), data.y.to(args.device), mode=args.mode, eps=r.eps, steps=r.steps,
            step=r.step, alpha=r.alpha, beta=r.beta, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, bounds=bounds_of(meta), eps_warmup=args.eps_warmup,
        )
        return defended, report.seconds

    settings = {"mode": args.mode, "eps": r.eps, "steps": r.steps, "step": r.step, "alpha": r.alpha, "beta": r.beta}
    for key in ("eps_warmup", "fine_tune"):  # (absent when off, so earlier runs' settings still match)
        if getattr(args, key):
            settings[key] = getattr(args, key)
    return defend(args, "adv-train", settings, train)


def defend(args: argparse.Namespace, kind: str, settings: dict[str, Any], train: Trainer) -> int:
    """Claim the output folder, train the defense (or reuse the checkpoint an interrupted run
    saved), then evaluate it through the evaluation pipeline and write evaluation.json.

    The folder is claimed before training: the same arguments and ``--out`` resume (a finished
    training is not repeated, finished attack units are not recomputed); a folder holding
    another run is refused unless ``--overwrite``.
    """
    model, meta, train_set, test, script = _load(args, kind)
    specs = fit_attacks(attack_specs(args.attacks, args.pgd_steps), model, bool(args.attacks), test.x[:1])
    description = {"defense": kind, "settings": settings, "data": args.data,
                   **({"image_size": args.image_size} if args.image_size else {}), "epochs": args.epochs,
                   "batch_size": args.batch_size, "lr": args.lr, "eot_samples": args.eot_samples,
                   "options": {k: getattr(args, k, None) for k in ("mean", "std", "output_key", "model_arg")}}
    the_plan = plan_defense(specs, test, output=args.out, source=args.model, defense=kind, seed=args.seed,
                            device=args.device, num=args.num, description=description,
                            save_adversarial=args.save_adv, save_png=args.save_png, model=model)
    out = Path(args.out)
    with RunStore(out, "defend") as store:
        resumed = store.claim(the_plan.fingerprint, {**the_plan.cfg.to_dict(), "defense": description},
                              args.overwrite, the_plan.extra)
        if resumed and (out / TRAINING).is_file():
            defended = restore(out, model)
            trained = json.loads((out / TRAINING).read_text())
            accuracy, train_seconds = float(trained["test_accuracy"]), float(trained["train_seconds"])
            print(f"{kind}: reusing the defended checkpoint an earlier run trained in {out}")
        else:
            defended, train_seconds = train(model, meta, train_set)
            accuracy = measured_accuracy(defended, test.x.to(args.device), test.y)
            saved = {k: v for k, v in meta.items()
                     if k not in ("arch", "metrics", "training", "format_version", "schema_version")}
            saved["metrics"] = {"test_accuracy": accuracy, "train_seconds": train_seconds}
            saved["defense"] = {"kind": kind, "base_model": args.model, "data": args.data, "epochs": args.epochs,
                                "seed": args.seed, **settings}
            saved.setdefault("input_shape", list(test.x.shape[1:]))
            save_defended(set_eval(defended), out, saved, test.x[:CHECK].to(args.device), f"--model {args.model}",
                          base=script[0] if script is not None and isinstance(defended, Purified) and defended.model is model
                          else None)
            if script is not None and script[1] == TRACED:  # (only when saved: a resumed run saves nothing)
                print(f"{kind}: --model {args.model} does not compile with torch.jit.script: the defended model is "
                      f"saved traced, checked on {min(CHECK, len(test))} test images (Python branches on input "
                      "values stay as traced)")
            store.write_json(TRAINING, {"test_accuracy": accuracy, "train_seconds": train_seconds})
        start = time.perf_counter()  # eval_seconds: everything after the training
        print(f"{kind}: test accuracy {accuracy:.4f}, trained in {train_seconds:.1f} s; checkpoint written to {out}")
        if args.no_eval:
            return 0
        report = run_defense(the_plan, store, defended, model, bounds_of(meta), args.eot_samples,
                             progress=sys.stderr.isatty(), resumed=resumed)
        report.update(defense=kind, settings=settings, train_seconds=train_seconds, checkpoint=str(out),
                      eval_seconds=time.perf_counter() - start)
        path = write_json(out / "evaluation.json", report)
    rows = table_rows(kind, report, train_seconds)
    print_table(rows, ["defense", "attacks", "clean", *(s.name for s in specs), "train_s"])
    again = f" ({report['units_resumed']} units resumed from an earlier run)" if report["units_resumed"] else ""
    print(f"evaluation written{again} to {path}")
    return 0
