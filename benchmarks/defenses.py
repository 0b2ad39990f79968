"""Defenses on mnist-sample with the lenet: clean and adversarial accuracy, transfer vs adaptive.

For no defense, the denoising autoencoder (trained on Gaussian noise and FGSM examples of
the lenet), block switching as published (K=5 channels of convolutions + first fully
connected layer, round two trains the active channels) and with frozen channels (the same
five round-one channels), DAE + block switching (that autoencoder in front of the published
block switching) and adversarial training in the modes of Goodfellow et al. (FGSM, alpha 0.5,
eps 0.25), Madry et al. (PGD-40 x 0.01 examples only, eps 0.3) and TRADES (beta 6, eps 0.3,
40 x 0.01), the script reports accuracy on the first ``-n`` test images, clean and under
FGSM (eps 0.3), PGD-40 (eps 0.3, steps of 0.01) with one random start and with ``--restarts``,
JSMA (theta 1, gamma 0.145, random targets) and ISI (relevance, L0), each

- ``transfer``: crafted on the undefended lenet (the setting of the defenses' papers),
- ``adaptive``: crafted on the defense itself (through the denoiser; EOT over all channels
  for block switching, through the denoiser for DAE + block switching; BPDA where a
  denoiser's gradient vanishes; white-box on the adversarially trained models),
- ``worst``: a sample counts only if it resists both,

and the training time of every defense (block switching: round one, shared by both
variants, plus its own round two). Then EOT's expected loss gradient against the gradient of
the averaged logits on block switching (mean cosine, PGD accuracy with each), and PGD-40 at eps 0.3 on the undefended lenet over
``--restart-n`` images with 1 and 10 restarts.

Budget: ``--epochs`` and ``--train-n`` apply to every training run (each round-one copy, each
round two, the autoencoder and each adversarial training) unless ``--budget NAME=N:E`` gives
the defense ``NAME`` (dae, block-switch, goodfellow, madry, trades) its own N training images
and E epochs; Madry and TRADES cost about 41 forward and backward passes per image.
``--eps-warmup MODE=E`` grows that adversarial-training mode's radius linearly over its first
E epochs (a deviation from the papers, off by default; the row's name then says so). A mode
whose model stays near chance after its budget is reported with its clean accuracy only:
Madry's does at the default budget (a fresh lenet at eps 0.3 predicts one class after 128
batches of 64); ``--budget madry=2000:4 --eps-warmup madry=2`` gave 90% clean and 44% under
adaptive PGD-40 on 50 images (1,209 s of training, 1 thread, machine load about 7).
Every figure is over a small sample: one image is 1 point at n=100.

Run: ``python benchmarks/defenses.py [--quick] [--model runs/lenet] [-n 100] [--epochs 2] [--restarts 5]
[--budget madry=2000:4 --eps-warmup madry=2] [--device auto]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _device import add_device_flag, announce
from torch import nn

from salmap import data, models
from salmap.attacks import PGD
from salmap.cli.common import print_table
from salmap.defenses import (
    EOT,
    DenoisingAutoencoder,
    Purified,
    adversarial_training,
    dae_block_switch,
    evaluate_defense,
    train_denoiser,
)
from salmap.defenses.block_switch import assemble_block_switch, train_sub_models
from salmap.defenses.evaluation import AttackSpec, table_rows
from salmap.gradients import loss_grad

#: the defenses whose training budget ``--budget`` may set.
TRAINED = ("dae", "block-switch", "goodfellow", "madry", "trades")


def lenet(path: str | None, cache: Path) -> tuple[nn.Module, dict, str]:
    """The trained lenet: ``--model``, else trained once (like ``salmap demo``'s) and cached."""
    if path and (Path(path) / "model.json").is_file():
        model, meta = models.load_with_meta(path)
        return model, meta, path
    from salmap.cli.demo import cached_lenet

    model, meta, _ = cached_lenet(cache, epochs=12)
    return model, meta, str(cache)


def attack_set(restarts: int, pgd_steps: int, isi_iterations: int) -> list[AttackSpec]:
    step = 0.01 if pgd_steps >= 40 else 2.5 * 0.3 / pgd_steps
    pgd = {"eps": 0.3, "step": step, "steps": pgd_steps}
    return [
        AttackSpec("fgsm-0.3", "fgsm", {"eps": 0.3}),
        AttackSpec(f"pgd-{pgd_steps}", "pgd", pgd),
        AttackSpec(f"pgd-{pgd_steps}-r{restarts}", "pgd", {**pgd, "restarts": restarts}),
        AttackSpec("jsma", "jsma", {"theta": 1.0, "gamma": 0.145}, targeted=True),
        AttackSpec("isi-l0", "isi", {"indicator": "relevance", "norm": "l0", "max_iter": isi_iterations}),
    ]


def keyed(values: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` pairs of a repeated flag, names checked against :data:`TRAINED`."""
    pairs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in TRAINED:
            raise SystemExit(f"{flag}: expected NAME=VALUE with NAME one of {', '.join(TRAINED)}, got {item!r}")
        pairs[name] = value
    return pairs


def budgets(values: list[str], train_n: int, epochs: int) -> dict[str, tuple[int, int]]:
    """Training images and epochs of every trained defense: ``--budget NAME=N:E`` or the defaults."""
    out = dict.fromkeys(TRAINED, (train_n, epochs))
    for name, value in keyed(values, "--budget").items():
        try:
            n, e = (int(v) for v in value.split(":"))
        except ValueError:
            raise SystemExit(f"--budget: expected NAME=IMAGES:EPOCHS, got {name}={value!r}") from None
        out[name] = (n, e)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 images, 1 epoch, fewer attack iterations")
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default: train and cache one)")
    p.add_argument("-n", "--num", type=int, default=None, help="test images (default 100, quick 40)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every training run (default 2, quick 1)")
    p.add_argument("--train-n", type=int, default=None, help="training images (default all 4,000)")
    p.add_argument("--restarts", type=int, default=5, help="PGD restarts in the table (default 5)")
    p.add_argument("--restart-n", type=int, default=500, help="images for the 1 vs 10 restarts line (default 500)")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=N:E",
                   help="training images and epochs of one defense (dae, block-switch, goodfellow, madry, trades)")
    p.add_argument("--eps-warmup", action="append", default=[], metavar="MODE=E",
                   help="grow an adversarial-training mode's eps over its first E epochs (not in the papers)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    add_device_flag(p)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "salmap-bench" / "lenet"))
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.num or (40 if args.quick else 100)
    epochs = args.epochs or (1 if args.quick else 2)
    pgd_steps, isi_iterations = (10, 10) if args.quick else (40, 30)

    full = data.load_dataset("mnist-sample", "train")
    budget = budgets(args.budget, args.train_n or len(full), epochs)
    try:
        warmups = {k: float(v) for k, v in keyed(args.eps_warmup, "--eps-warmup").items()}
    except ValueError:
        raise SystemExit(f"--eps-warmup: expected MODE=EPOCHS, got {args.eps_warmup}") from None
    device = announce(args.device)
    model, meta, source = lenet(args.model, Path(args.cache))
    model = model.to(device)
    arch = meta["arch"]

    def train_set(name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        subset = full.subset(budget[name][0])
        return subset.x.to(device), subset.y.to(device), budget[name][1]

    test = data.load_dataset("mnist-sample", "test")
    x, y = test.x[:n].to(device), test.y[:n].to(device)
    specs = attack_set(args.restarts, pgd_steps, isi_iterations)
    print(f"lenet from {source}; {n} test images; training images and epochs: "
          + ", ".join(f"{k} {v[0]} x {v[1]}" for k, v in budget.items())
          + "".join(f"; {k} eps warm-up {v:g} epoch(s)" for k, v in warmups.items())
          + f"; PGD {pgd_steps} steps (restarts {args.restarts}), ISI {isi_iterations} iterations; "
          f"{args.threads} thread(s)", flush=True)

    start = time.perf_counter()

    defenses: list[tuple[str, nn.Module, float]] = [("none", model, 0.0)]
    torch.manual_seed(0)
    denoiser = DenoisingAutoencoder(in_channels=1, width=32).to(device)
    xt, yt, e = train_set("dae")
    dae_s = train_denoiser(denoiser, xt, noise_std=0.3, model=model, y=yt, attack="fgsm", eps=0.3,
                           epochs=e, seed=0, progress=False).seconds
    defenses.append(("dae", Purified(model, denoiser), dae_s))
    print(f"dae trained in {dae_s:.0f} s", flush=True)
    xt, yt, e = train_set("block-switch")
    copies, round_one = train_sub_models(arch, xt, yt, channels=5, epochs=e, seed=0, progress=False)
    paper, report = assemble_block_switch(arch, copies, xt, yt, epochs=e, seed=0, progress=False,
                                          seconds=round_one)
    defenses.append(("block-switch", paper, report.seconds))
    frozen, report_frozen = assemble_block_switch(arch, copies, xt, yt, epochs=e, seed=0,
                                                  progress=False, freeze_channels=True, seconds=round_one)
    defenses.append(("block-switch frozen", frozen, report_frozen.seconds))
    defenses.append(("dae+block-switch", dae_block_switch(paper, denoiser), dae_s + report.seconds))
    print(f"block switching trained in {report.seconds:.0f} s (frozen variant {report_frozen.seconds:.0f} s, "
          f"round one {round_one:.0f} s of each)", flush=True)
    for mode in ("goodfellow", "madry", "trades"):
        torch.manual_seed(0)
        robust = models.build(arch["name"], **arch.get("kwargs", {})).to(device)
        xt, yt, e = train_set(mode)
        warmup = warmups.get(mode, 0.0)
        seconds = adversarial_training(robust, xt, yt, mode=mode, epochs=e, seed=0, progress=False,
                                       eps_warmup=warmup).seconds
        name = f"adv-{mode}" + (f" (eps warm-up {warmup:g} ep)" if warmup else "")
        defenses.append((name, robust, seconds))
        print(f"{name} trained in {seconds:.0f} s", flush=True)
    print(f"defenses trained in {time.perf_counter() - start:.0f} s so far", flush=True)

    rows, results = [], {}
    for name, defended, seconds in defenses:
        t0 = time.perf_counter()
        try:
            result = evaluate_defense(defended, model, x, y, specs, seed=0, progress=False)
        except ValueError as err:  # a model left near chance by the epoch budget
            print(f"{name}: not evaluated: {err}", flush=True)
            results[name] = {"error": str(err), "train_seconds": seconds}
            continue
        result["train_seconds"] = seconds
        results[name] = result
        rows.extend(table_rows(name, result, seconds))
        print(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s: " + "; ".join(
            f"{setting} " + " ".join(f"{k} {v:.2f}" for k, v in result[setting].items())
            for setting in ("transfer", "adaptive") if result.get(setting)), flush=True)
    print()
    print_table(rows, ["defense", "attacks", "clean", *(s.name for s in specs), "train_s"])

    # EOT's two gradients on the published block switching: the expected loss gradient (Athalye et al.)
    # against the gradient of the loss of the averaged logits, and PGD's robust accuracy with each.
    eot = {}
    for average in ("loss", "logits"):
        attack_model = EOT(paper, average=average)
        eot[average] = (loss_grad(attack_model, x, y)[1].flatten(1),
                        PGD(attack_model, eps=0.3, step=0.01, steps=pgd_steps, seed=0)(x, y=y).x_adv)
    cosine = float(nn.functional.cosine_similarity(eot["loss"][0], eot["logits"][0]).mean())
    accuracies = {}
    for average, (_, x_adv) in eot.items():
        paper.reseed(1)
        with torch.no_grad():
            accuracies[average] = float((paper(x_adv).argmax(1) == y).float().mean())
    print(f"\nEOT on block-switch: mean cosine {cosine:.3f} between the expected loss gradient and the "
          f"logit average's; PGD-{pgd_steps} accuracy {accuracies['loss']:.1%} (expected loss) vs "
          f"{accuracies['logits']:.1%} (averaged logits)")
    results["eot"] = {"cosine": cosine, "accuracy": accuracies}

    xr, yr = test.x[: args.restart_n].to(device), test.y[: args.restart_n].to(device)
    line = []
    for restarts in (1, 10):
        t0 = time.perf_counter()
        r = PGD(model, eps=0.3, step=0.01, steps=40, restarts=restarts, seed=0)(xr, y=yr)
        accuracy = float((r.pred_after == yr).float().mean())
        line.append({"restarts": restarts, "accuracy": accuracy, "seconds": time.perf_counter() - t0})
    print(f"\nPGD-40 eps 0.3 on the undefended lenet, {xr.shape[0]} images: " + "; ".join(
        f"{e['restarts']} restart(s) {e['accuracy']:.1%} accuracy ({e['seconds']:.0f} s)" for e in line))
    results["pgd_restarts"] = line
    print(f"\ntotal {time.perf_counter() - start:.0f} s; accuracy on {n} mnist-sample test images; "
          "'none' rows are white-box on the lenet itself")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
