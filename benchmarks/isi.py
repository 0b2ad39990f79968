"""ISI against JSMA on the lenet trained on mnist-sample: success, distortion, seconds, throughput.

Every indicator x norm of ISI (Qiu et al. 2020), untargeted, on the correctly classified
images among the first ``--num`` test images, beside untargeted JSMA with the same L0
budget (gamma = 30/784: at most 30 features). Run ``python benchmarks/isi.py [--quick]``.

Throughput is compared with three JSMAs:

- ``jsma``: salmap's JSMA, which reads the two class-score gradients it needs with one
  forward pass and two vector-Jacobian products per iteration, and changes two features
  per iteration;
- ``jsma full-jacobian``: the same attack (same results) paying what the JSMA the ISI
  authors compared with pays (cleverhans computes the whole Jacobian, one backward pass per
  class): one forward pass and K vector-Jacobian products per iteration, batched;
- ``torchattacks jsma``: torchattacks' JSMA (one image at a time, full Jacobian, a dense
  784 x 784 pair map), if installed; untargeted calls attack class ``(y + 1) % 10``, so its
  success is "label changed".

The two reference JSMAs run on every ``k``-th image (``--reference-num`` of them, spread
over the whole set so that they are as hard on average); the speed ratios compare
images per second.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

import salmap.attacks.jsma as jsma_module
from salmap import data, models
from salmap.attacks import ISI, JSMA, Attack, AttackResult
from salmap.cli.attack import run_batches
from salmap.cli.common import print_table
from salmap.devices import resolve_device
from salmap.gradients import Model, output_vjps
from salmap.metrics import distortion

DEFAULT_MODEL = Path("/work/cache/lenet")
JSMA_NAME = "jsma (gamma=30/784)"
FULL_NAME = "jsma full-jacobian"
TA_NAME = "torchattacks jsma"


def load_model(path: str | None, epochs: int) -> torch.nn.Module:
    if path is not None:
        return models.load(path)
    if (DEFAULT_MODEL / "model.json").is_file():
        return models.load(DEFAULT_MODEL)
    from salmap.cli.demo import cached_lenet

    model, _, _ = cached_lenet(Path(".cache/isi-lenet"), epochs)
    return model


def attacks(model: torch.nn.Module, l0_budget: int) -> dict[str, Attack]:
    table: dict[str, Attack] = {}
    for indicator in ("relevance", "sensitivity"):
        table[f"isi {indicator} l0"] = ISI(model, indicator=indicator, norm="l0", max_iter=l0_budget)
        table[f"isi {indicator} l2"] = ISI(model, indicator=indicator, norm="l2", eps=0.2, n_features=10,
                                           max_iter=30)
        table[f"isi {indicator} linf"] = ISI(model, indicator=indicator, norm="linf", eps=0.01, max_iter=30)
    return table


def full_jacobian_grads(model: Model, x: Tensor, classes: Tensor, probabilities: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """``class_score_grads`` as cleverhans pays for it: the whole Jacobian, one VJP per class."""
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    transform = (lambda z: torch.softmax(z, dim=1)) if probabilities else None
    cots = [torch.nn.functional.one_hot(torch.full_like(classes, j), k) for j in range(k)]
    scores, jac = output_vjps(model, x, cots, transform=transform)
    rows = torch.stack(jac)  # (K, B, ...)
    alpha = rows[classes, torch.arange(x.shape[0])]
    return scores, alpha, rows.sum(0) - alpha


@contextlib.contextmanager
def full_jacobian_jsma() -> Iterator[None]:
    """Make salmap's JSMA read its two gradients from the full Jacobian (same results, cleverhans' cost)."""
    saved = jsma_module.class_score_grads
    jsma_module.class_score_grads = full_jacobian_grads
    try:
        yield
    finally:
        jsma_module.class_score_grads = saved


def row(name: str, result: AttackResult, took: float, count: int) -> dict[str, object]:
    ok = result.success
    return {
        "attack": name, "images": count, "success": result.success_rate, "l0": float(result.l0.mean()),
        "l0_success": float(result.l0[ok].mean()) if ok.any() else float("nan"),
        "l2": float(result.l2.mean()), "linf": float(result.linf.mean()), "seconds": took,
        "images/s": count / took, "ms/iteration": 1000 * took / max(int(result.iterations.sum()), 1),
    }


def torchattacks_row(model: torch.nn.Module, x: Tensor, y: Tensor, gamma: float) -> dict[str, object] | None:
    try:
        import torchattacks
    except ImportError:
        return None
    attack = torchattacks.JSMA(model, theta=1.0, gamma=gamma)
    start = time.perf_counter()
    x_adv = attack(x, y).detach()
    took = time.perf_counter() - start
    with torch.no_grad():
        ok = model(x_adv).argmax(1) != y
    l0, l2, linf = distortion(x, x_adv)
    return {
        "attack": TA_NAME, "images": len(x), "success": float(ok.float().mean()), "l0": float(l0.mean()),
        "l0_success": float(l0[ok].mean()) if ok.any() else float("nan"), "l2": float(l2.mean()),
        "linf": float(linf.mean()), "seconds": took, "images/s": len(x) / took,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"checkpoint folder (default {DEFAULT_MODEL} or train one)")
    parser.add_argument("--num", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 images only, references on 20")
    parser.add_argument("--reference-num", type=int, default=200,
                        help="images the two reference JSMAs run on, spread over the set (default 200)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no model is cached")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = load_model(args.model, args.epochs).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.load("mnist-sample", "test")
    num = 100 if args.quick else args.num
    x, y = x[:num].to(device), y[:num].to(device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    features = int(x[0].numel())
    gamma = 30 / features
    stride = max(1, len(x) // (20 if args.quick else args.reference_num))
    xr, yr = x[::stride], y[::stride]
    print(f"{len(x)} correctly classified test images of {num} (references: every {stride}th, {len(xr)} images); "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    table: dict[str, tuple[Attack, Tensor, Tensor]] = {n: (a, x, y) for n, a in attacks(model, 30).items()}
    table[JSMA_NAME] = (JSMA(model, theta=1.0, gamma=gamma), x, y)
    table[FULL_NAME] = (JSMA(model, theta=1.0, gamma=gamma), xr, yr)
    for name, (attack, xs, ys) in table.items():
        with full_jacobian_jsma() if name == FULL_NAME else contextlib.nullcontext():
            start = time.perf_counter()
            result = run_batches(attack, xs, ys, None, args.batch_size, name)
            took = time.perf_counter() - start
        rows.append(row(name, result, took, len(xs)))
    ta = torchattacks_row(model, xr, yr, gamma)
    rows.append(ta if ta is not None else {"attack": TA_NAME, "success": "not installed"})
    speed = {r["attack"]: r["images/s"] for r in rows if "images/s" in r}
    for r in rows:
        for ref, col in ((JSMA_NAME, "x jsma"), (FULL_NAME, "x full-jac"), (TA_NAME, "x torchattacks")):
            if r["attack"] in speed and ref in speed:
                r[col] = float(speed[r["attack"]]) / float(speed[ref])
    print_table(rows, ["attack", "images", "success", "l0", "l0_success", "l2", "linf", "seconds", "images/s",
                       "ms/iteration", "x jsma", "x full-jac", "x torchattacks"])


if __name__ == "__main__":
    main()
