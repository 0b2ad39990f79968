"""``salmap demo``: the tour on the embedded MNIST sample.

Trains (or reuses a cached) lenet, attacks it, and writes results and pictures into
the output folder, printing a table and where everything is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from salmap import data as datasets
from salmap import models
from salmap.attacks import FGSM
from salmap.cli.attack import run_batches
from salmap.cli.common import output_folder, print_table, write_json
from salmap.cli.train import build_classifier
from salmap.evaluation.figures import adversarial_grid
from salmap.training import classifier_accuracy, train_classifier

DEMO_EPS = (0.1, 0.2, 0.3)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the full tour on the embedded MNIST sample", description=__doc__)
    p.add_argument("--out", default="salmap-demo", help="output folder (default ./salmap-demo)")
    p.add_argument("-n", "--num", type=int, default=200, help="test images to attack (default 200)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs when no cached model (default 12)")
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    p.set_defaults(func=run)


def cached_lenet(folder: Path, epochs: int, retrain: bool = False):
    """The demo's lenet: loaded from ``folder`` if trained before, else trained and saved there."""
    train = datasets.load_dataset("mnist-sample", "train")
    test = datasets.load_dataset("mnist-sample", "test")
    if (folder / "model.json").is_file() and not retrain:
        model, meta = models.load_with_meta(folder)
        print(f"reusing the trained lenet in {folder}")
        return model, meta, test
    print(f"training lenet on mnist-sample ({len(train)} images, {epochs} epochs)")
    model, meta = build_classifier("lenet", train)
    report = train_classifier(model, train.x, train.y, test.x, test.y, epochs=epochs, seed=0)
    meta["metrics"] = {"test_accuracy": report.test_accuracy, "seconds": report.seconds}
    meta["training"] = {"data": "mnist-sample", "epochs": epochs, "seed": 0}
    models.save(model, folder, meta)
    print(f"test accuracy {report.test_accuracy:.4f} ({report.seconds:.0f} s); saved to {folder}")
    return model, meta, test


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = output_folder(args.out)
    model, meta, test = cached_lenet(out / "lenet", args.epochs, args.retrain)
    ds = test.subset(min(args.num, len(test)))
    clean_acc = classifier_accuracy(model, ds.x, ds.y)
    rows = []
    for eps in DEMO_EPS:
        result = run_batches(FGSM(model, eps=eps), ds.x, ds.y, None, 100, f"fgsm eps={eps}")
        adv_acc = float((result.pred_after == ds.y).float().mean())
        s = result.summary()
        rows.append({"attack": "fgsm", "eps": eps, "clean_acc": clean_acc, "adv_acc": adv_acc,
                     "success": s["success_rate"], "l2": s["l2"], "linf": s["linf"], "seconds": s["seconds"]})
        adversarial_grid(ds.x, result.x_adv, ds.y, result.pred_before, result.pred_after,
                         out / f"fgsm_eps{eps}.png", ds.class_names, title=f"FGSM eps={eps}")
    print_table(rows, ["attack", "eps", "clean_acc", "adv_acc", "success", "l2", "linf", "seconds"])
    write_json(out / "demo.json", {"model": str(out / "lenet"), "images": len(ds), "rows": rows,
                                   "seconds": time.perf_counter() - start})
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results and pictures in {out.resolve()}")
    return 0
