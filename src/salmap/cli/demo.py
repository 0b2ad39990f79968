"""``salmap demo``: the full tour on the embedded data.

Trains (or reuses cached) models: the lenet on the MNIST sample, a denoising-autoencoder
defense in front of it, and a unet on mnist-seg. Then one evaluation attacks both
classifiers with FGSM, JSMA and ISI and explains them (gradient saliency, occlusion), and
a second one runs the segmentation JSMA on the unet. Each writes results.jsonl,
summary.json, figures and a self-contained report.html; the demo prints where they are.
Run again, it reuses the models and the finished evaluations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salmap import data as datasets
from salmap import models
from salmap._repr import short
from salmap.cli.checks import take
from salmap.cli.common import add_device_arg, output_folder, print_table, write_json
from salmap.cli.train import build_classifier
from salmap.evaluation.config import RunConfig, parse_config
from salmap.evaluation.runner import Outcome
from salmap.training import train_classifier


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the full tour on the embedded MNIST sample", description=__doc__)
    p.add_argument("--out", default="salmap-demo", help="output folder (default ./salmap-demo)")
    p.add_argument("-n", "--num", type=int, default=None, help="test images to attack (default 40)")
    p.add_argument("--seg-num", type=int, default=None,
                   help="mnist-seg images for the segmentation JSMA (default 4)")
    p.add_argument("--defense-epochs", type=int, default=1, help="denoiser training epochs (default 1)")
    p.add_argument("--seg-epochs", type=int, default=2, help="unet training epochs (default 2)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs when no cached model (default 12)")
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    add_device_arg(p)
    p.set_defaults(func=run)


def cached_lenet(
    folder: Path, epochs: int, retrain: bool = False, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any], datasets.Dataset]:
    """The demo's lenet, on ``device``: loaded from ``folder`` if trained before, else trained and saved there."""
    train = datasets.load_dataset("mnist-sample", "train")
    test = datasets.load_dataset("mnist-sample", "test")
    if (folder / "model.json").is_file() and not retrain:
        model, meta = models.load_with_meta(folder)
        print(f"reusing the trained lenet in {folder}")
        return model.to(device), meta, test
    print(f"training lenet on mnist-sample ({len(train)} images, {epochs} epochs)")
    torch.manual_seed(0)  # the initial weights are seeded like the training
    model, meta = build_classifier("lenet", train)
    model = model.to(device)
    report = train_classifier(model, train.x, train.y, test.x, test.y, epochs=epochs, seed=0)
    meta["metrics"] = {"test_accuracy": report.test_accuracy, "seconds": report.seconds}
    meta["training"] = {"data": "mnist-sample", "epochs": epochs, "seed": 0}
    models.save(model, folder, meta)
    print(f"test accuracy {report.test_accuracy:.4f} ({report.seconds:.0f} s); saved to {folder}")
    return model, meta, test


def cached_denoised(folder: Path, lenet: nn.Module, lenet_meta: dict, epochs: int, retrain: bool = False) -> Path:
    """The demo's defended model: a denoising autoencoder in front of the lenet (Purified),
    trained on noisy and FGSM images, cached in ``folder``."""
    if (folder / "model.json").is_file() and not retrain:
        print(f"reusing the denoiser-defended lenet in {folder}")
        return folder
    from salmap.defenses import DenoisingAutoencoder, Purified, train_denoiser

    train = datasets.load_dataset("mnist-sample", "train")
    print(f"training a denoising autoencoder for the lenet ({len(train)} images, {epochs} epochs)")
    denoiser = DenoisingAutoencoder(in_channels=1, width=16).to(next(lenet.parameters()).device)
    train_denoiser(denoiser, train.x, noise_std=0.3, model=lenet, y=train.y, attack="fgsm", eps=0.3,
                   epochs=epochs, batch_size=32, lr=2e-3, seed=0)
    meta = {k: lenet_meta[k] for k in ("input_shape", "bounds", "normalization", "class_names", "task")
            if k in lenet_meta}
    meta["defense"] = {"name": "denoiser", "epochs": epochs, "noise_std": 0.3, "adversarial": "fgsm eps<=0.3"}
    models.save(Purified(lenet, denoiser), folder, meta)
    return folder


def cached_unet(folder: Path, epochs: int, retrain: bool = False, device: str = "cpu") -> Path:
    """The demo's segmenter: a small unet trained on mnist-seg, cached in ``folder``."""
    if (folder / "model.json").is_file() and not retrain:
        print(f"reusing the trained unet in {folder}")
        return folder
    from salmap.cli.train_seg import build_segmenter, train_segmenter

    train = datasets.load_dataset("mnist-seg", "train").subset(1000)
    test = datasets.load_dataset("mnist-seg", "test").subset(300)
    print(f"training a unet on mnist-seg ({len(train)} images, {epochs} epochs)")
    torch.manual_seed(0)
    model, meta = build_segmenter("unet", train, base=8, depth=2)
    model = model.to(device)
    report = train_segmenter(model, train, test, epochs=epochs, seed=0)
    meta["metrics"] = {**report.test_metrics, "seconds": report.seconds}
    models.save(model, folder, meta)
    print(f"unet test mean IoU {report.test_metrics['mean_iou']:.4f}; saved to {folder}")
    return folder


#: the names of the demo's two runs (an earlier demo's run under them is the demo's to replace)
MAIN_NAME, SEG_NAME = "salmap demo: lenet and a denoiser defense", "salmap demo: segmentation JSMA"


def check_not_another_run(folder: Path, name: str) -> None:
    """``ValueError`` when ``folder`` holds a salmap run that is not the demo's run ``name`` (the
    demo replaces its own earlier runs, never another)."""
    from salmap.evaluation.runner import RUN_FILE

    if not (folder / RUN_FILE).is_file():
        return
    try:
        held = json.loads((folder / RUN_FILE).read_text()).get("settings", {}).get("name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        held = None
    if held != name:
        raise ValueError(f"--out {folder.parent} holds another salmap run in {folder.name}/ "
                         f"({short(held)}, not the demo's): give the demo another --out")


def evaluate_cached(cfg: RunConfig) -> Outcome:
    """Run ``cfg``, resuming an earlier demo's identical run; an earlier demo's different run in the
    folder is replaced (:func:`check_not_another_run` refused any other before the demo began)."""
    from salmap.evaluation.runner import RUN_FILE, evaluate, prepare

    run_file = Path(cfg.output) / RUN_FILE
    same = False
    if run_file.is_file():
        try:
            same = json.loads(run_file.read_text()).get("fingerprint") == prepare(cfg).fingerprint
        except (json.JSONDecodeError, AttributeError):
            same = False
    return evaluate(cfg, overwrite=not same)


def check_flags(args: argparse.Namespace) -> None:
    """Before anything is trained: the counts are positive, and ``-n`` / ``--seg-num`` past the test
    split take all of it and say so (the evaluations would refuse them after the training)."""
    from salmap.evaluation.resources import load_split

    for flag in ("epochs", "defense_epochs", "seg_epochs", "num", "seg_num"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"{'-n' if flag == 'num' else '--' + flag.replace('_', '-')} must be positive, got {value}")
    args.num = take(args.num, len(load_split("mnist-sample", "test")), "mnist-sample", "test", 40)
    if args.seg_num is not None:  # (mnist-seg is generated: only when asked)
        args.seg_num = take(args.seg_num, len(load_split("mnist-seg", "test")), "mnist-seg", "test", 4, "--seg-num")
    args.seg_num = args.seg_num or 4


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_flags(args)
    for sub, name in (("evaluation", MAIN_NAME), ("segmentation", SEG_NAME)):
        check_not_another_run(Path(args.out) / sub, name)
    out = output_folder(args.out)
    steps = 6

    def step(i: int, text: str) -> None:
        print(f"\n[{i}/{steps}] {text}  ({time.perf_counter() - start:.0f} s)", flush=True)

    step(1, "classifier: the lenet of Papernot et al. on the embedded MNIST sample")
    lenet, meta, _ = cached_lenet(out / "lenet", args.epochs, args.retrain, args.device)
    step(2, "defense: a denoising autoencoder in front of the lenet")
    defended = cached_denoised(out / "lenet-denoised", lenet, meta, args.defense_epochs, args.retrain)
    step(3, "segmenter: a unet on mnist-seg (digits on cluttered backgrounds)")
    unet = cached_unet(out / "unet", args.seg_epochs, args.retrain, args.device)

    step(4, f"attacks and explanations on {args.num} test images: FGSM, JSMA, ISI; gradient saliency, occlusion")
    cfg = parse_config({
        "name": MAIN_NAME,
        "output": str(out / "evaluation"), "seed": 0, "batch_size": 20, "device": args.device,
        "data": {"name": "mnist-sample", "split": "test", "num": args.num},
        "models": [{"name": "lenet", "path": str(out / "lenet")},
                   {"name": "lenet+denoiser", "path": str(defended), "defense": "denoiser"}],
        "attacks": [
            {"attack": "fgsm", "name": "FGSM eps=0.2", "params": {"eps": 0.2}},
            {"attack": "jsma", "name": "JSMA", "targets": "random", "params": {"theta": 1.0, "gamma": 0.145}},
            {"attack": "isi", "name": "ISI L0", "params": {"indicator": "sensitivity", "norm": "l0"}},
        ],
        "explanations": [{"explainer": "gradient"}, {"explainer": "occlusion", "params": {"patch": 4, "stride": 2}}],
        "figures": {"samples": 6},
    }, source="demo")
    main_run = evaluate_cached(cfg)

    step(5, f"segmentation JSMA on {args.seg_num} mnist-seg images: hide the digit")
    seg_cfg = parse_config({
        "name": SEG_NAME,
        "output": str(out / "segmentation"), "seed": 0, "batch_size": args.seg_num, "device": args.device,
        "data": {"name": "mnist-seg", "split": "test", "num": args.seg_num},
        "models": [{"name": "unet", "path": str(unet)}],
        "attacks": [{"attack": "jsma-seg", "name": "JSMA-seg hide", "targets": "hide",
                     "params": {"gamma": 0.05, "candidates": 200, "k": 4}}],
        "explanations": [{"explainer": "gradient"}],
        "figures": {"samples": 4},
    }, source="demo")
    seg_run = evaluate_cached(seg_cfg)

    step(6, "results")
    rows = []
    for outcome in (main_run, seg_run):
        for r in (outcome.summary or {}).get("results", []):
            rows.append({k: r[k] for k in ("model", "attack", "clean_accuracy", "adversarial_accuracy",
                                            "success_rate", "l0_mean_success", "l2_mean_success", "linf_mean_success",
                                            "seconds")})
    print_table(rows, list(rows[0]))
    write_json(out / "demo.json", {"rows": rows, "seconds": time.perf_counter() - start,
                                   "reports": [str(main_run.output / "report.html"), str(seg_run.output / "report.html")]})
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {out.resolve()}")
    print(f"  report:              {(main_run.output / 'report.html').resolve()}")
    print(f"  segmentation report: {(seg_run.output / 'report.html').resolve()}")
    return 0
