"""ISI against JSMA on the lenet trained on mnist-sample: success, distortion, seconds, throughput.

Every indicator x norm of ISI (Qiu et al. 2020), untargeted, on the correctly classified
images among the first ``--num`` test images, beside untargeted JSMA with the same L0
budget (gamma = 30/784: at most 30 features). Run ``python benchmarks/isi.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from salmap import data, models
from salmap.attacks import ISI, Attack, AttackResult
from salmap.cli.attack import run_batches
from salmap.cli.common import print_table

DEFAULT_MODEL = Path("/work/cache/lenet")


def load_model(path: str | None, epochs: int) -> torch.nn.Module:
    if path is not None:
        return models.load(path)
    if (DEFAULT_MODEL / "model.json").is_file():
        return models.load(DEFAULT_MODEL)
    from salmap.cli.demo import cached_lenet

    model, _, _ = cached_lenet(Path(".cache/isi-lenet"), epochs)
    return model


def attacks(model: torch.nn.Module, l0_budget: int, features: int) -> dict[str, Attack | None]:
    table: dict[str, Attack | None] = {}
    for indicator in ("relevance", "sensitivity"):
        table[f"isi {indicator} l0"] = ISI(model, indicator=indicator, norm="l0", max_iter=l0_budget)
        table[f"isi {indicator} l2"] = ISI(model, indicator=indicator, norm="l2", eps=0.2, n_features=10,
                                           max_iter=30)
        table[f"isi {indicator} linf"] = ISI(model, indicator=indicator, norm="linf", eps=0.01, max_iter=30)
    try:
        from salmap.attacks import JSMA

        table["jsma (gamma=30/784)"] = JSMA(model, theta=1.0, gamma=l0_budget / features)
    except ImportError:
        table["jsma (gamma=30/784)"] = None
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help=f"checkpoint folder (default {DEFAULT_MODEL} or train one)")
    parser.add_argument("--num", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 images only")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no model is cached")
    args = parser.parse_args()
    model = load_model(args.model, args.epochs).eval()
    x, y = data.load("mnist-sample", "test")
    num = 100 if args.quick else args.num
    x, y = x[:num], y[:num]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    features = int(x[0].numel())
    print(f"{len(x)} correctly classified test images of {num}; torch threads {torch.get_num_threads()}")
    rows = []
    seconds: dict[str, float] = {}
    for name, attack in attacks(model, 30, features).items():
        if attack is None:
            rows.append({"attack": name, "success": "missing"})
            continue
        start = time.perf_counter()
        result: AttackResult = run_batches(attack, x, y, None, args.batch_size, name)
        took = time.perf_counter() - start
        seconds[name] = took
        ok = result.success
        rows.append({
            "attack": name, "success": result.success_rate, "l0": float(result.l0.mean()),
            "l0_success": float(result.l0[ok].mean()) if ok.any() else float("nan"),
            "l2": float(result.l2.mean()), "linf": float(result.linf.mean()), "seconds": took,
            "images/s": len(x) / took,
        })
    jsma = seconds.get("jsma (gamma=30/784)")
    for row in rows:
        if jsma and row["attack"] in seconds:
            row["x jsma speed"] = jsma / seconds[row["attack"]]
    print_table(rows, ["attack", "success", "l0", "l0_success", "l2", "linf", "seconds", "images/s", "x jsma speed"])


if __name__ == "__main__":
    main()
