"""Benchmark of salmap's JSMA against advertorch, torchattacks and ART, and its cost on large inputs.

1. On the lenet trained on mnist-sample, ``-n`` correctly classified test images, target
   ``(y + 1) mod 10``, theta=1, gamma=0.145: success rate, mean L0 (% of features),
   seconds and samples per second of salmap's JSMA (pairs, pairs with the literal search
   domain of Algorithm 3 (``saturation=0``), single features, probabilities)
   and of advertorch's ``JacobianSaliencyMapAttack``, torchattacks' ``JSMA`` and ART's
   ``SaliencyMapMethod`` on the same model and images (peers that are not installed are skipped).
2. The source-target grid of Papernot et al. on ``--per-class`` correct images per class:
   success % and mean L0 % per (source, target) pair.
3. resnet18 on 3x32x32 (small stem) and 3x224x224 (standard stem), batch 8, exact and
   ``candidates=1024``: seconds per iteration and peak memory. Each configuration runs in
   a fresh process; peak memory is that process's peak resident set (``VmHWM``, which
   covers torch's allocations, unlike tracemalloc), beside the peak just before the attack
   (model and input already built); on a GPU also the peak of CUDA memory allocated.

Everything runs on ``--device`` (default ``auto``: CUDA when available, else the CPU; ART's
NumPy interface gets and returns CPU arrays).

    python benchmarks/jsma.py [--quick] [--model PATH] [--threads 2] [--no-peers] [--no-large] [--device auto]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _device import add_device_flag, announce
from _memory import peak_rss_kib
from _timing import synchronize
from torch import Tensor, nn

from salmap import data, models
from salmap.attacks import JSMA
from salmap.cli.common import print_table
from salmap.cli.demo import cached_lenet
from salmap.metrics import distortion

GAMMA, THETA = 0.145, 1.0


def load_lenet(path: str | None, device: str) -> nn.Module:
    if path:
        return models.load(path).eval().to(device)
    model, _, _ = cached_lenet(Path(__file__).resolve().parent / ".cache" / "lenet", epochs=10)
    return model.eval().to(device)


def correct_images(model: nn.Module, per_class: int | None, total: int | None) -> tuple[Tensor, Tensor]:
    """Correctly classified mnist-sample test images: the first ``total``, or ``per_class`` of each class."""
    x, y = data.load("mnist-sample", "test")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    if per_class is not None:
        keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(10)])
        return x[keep], y[keep]
    return x[:total], y[:total]


# -- peers ---------------------------------------------------------------------------------------


def _shim_torchvision() -> None:
    """advertorch imports torchvision (unusable here) and a function torch 1.9 removed: stand-ins for both."""
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        transforms.ToPILImage = transforms.ToTensor = lambda *a, **k: None  # type: ignore[attr-defined]
        tv.transforms = transforms  # type: ignore[attr-defined]
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, transforms
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    if not hasattr(gradcheck, "zero_gradients"):
        def zero_gradients(x: Tensor) -> None:
            if isinstance(x, Tensor) and x.grad is not None:
                x.grad.detach_()
                x.grad.zero_()

        gradcheck.zero_gradients = zero_gradients  # type: ignore[attr-defined]


def peer_attacks(model: nn.Module) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Each installed peer as ``run(x, target) -> x_adv`` with theta=1, gamma=0.145, bounds [0, 1]."""
    peers: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    try:
        _shim_torchvision()
        from advertorch.attacks import JacobianSaliencyMapAttack

        adv = JacobianSaliencyMapAttack(model, num_classes=10, clip_min=0.0, clip_max=1.0, theta=THETA, gamma=GAMMA)
        peers["advertorch JSMA (pairs)"] = lambda x, t: adv.perturb(x.clone(), t)
    except ImportError as err:
        print(f"advertorch skipped: {err}")
    try:
        import torchattacks

        ta = torchattacks.JSMA(model, theta=THETA, gamma=GAMMA)

        def run_ta(x: Tensor, t: Tensor) -> Tensor:
            ta.set_mode_targeted_by_function(lambda images, labels: t)
            return ta(x, (t - 1) % 10)

        peers["torchattacks JSMA (pairs)"] = run_ta
    except ImportError as err:
        print(f"torchattacks skipped: {err}")
    try:
        from art.attacks.evasion import SaliencyMapMethod
        from art.estimators.classification import PyTorchClassifier

        gpu = next(model.parameters()).device.type == "cuda"
        clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="gpu" if gpu else "cpu")
        art = SaliencyMapMethod(clf, theta=THETA, gamma=GAMMA, batch_size=100, verbose=False)

        def run_art(x: Tensor, t: Tensor) -> Tensor:
            onehot = np.eye(10, dtype=np.float32)[t.cpu().numpy()]
            return torch.from_numpy(art.generate(x.cpu().numpy(), y=onehot)).to(x.device)

        peers["ART SaliencyMapMethod (single, target gradient)"] = run_art
    except ImportError as err:
        print(f"ART skipped: {err}")
    return peers


# -- 1. comparison ---------------------------------------------------------------------------------


def compare(model: nn.Module, x: Tensor, y: Tensor, peers: bool, peer_num: int) -> list[dict[str, object]]:
    target = (y + 1) % 10
    n = x[0].numel()
    ours: dict[str, JSMA] = {
        "salmap JSMA (pairs, logits)": JSMA(model, theta=THETA, gamma=GAMMA),
        "salmap JSMA (pairs, logits, saturation=0)": JSMA(model, theta=THETA, gamma=GAMMA, saturation=0.0),
        "salmap JSMA (single, logits)": JSMA(model, theta=THETA, gamma=GAMMA, pairs=False),
        "salmap JSMA (pairs, probabilities)": JSMA(model, theta=THETA, gamma=GAMMA, probabilities=True),
    }
    rows = []
    for name, attack in ours.items():
        result = attack(x, target=target)
        rows.append(row(name, len(x), result.success.float().mean(), result.l0.mean() / n, result.seconds))
        if peers and peer_num < len(x):  # the same figures on the peers' images
            part = slice(0, peer_num)
            rows.append(row(f"  same, first {peer_num} images", peer_num, result.success[part].float().mean(),
                            result.l0[part].mean() / n, float("nan")))
    x, target = x[:peer_num], target[:peer_num]
    for name, run in (peer_attacks(model) if peers else {}).items():
        synchronize(x.device)
        start = time.perf_counter()
        x_adv = run(x, target).float().clamp(0, 1)
        synchronize(x.device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            success = (model(x_adv).argmax(1) == target).float().mean()
        rows.append(row(name, len(x), success, distortion(x, x_adv)[0].mean() / n, seconds))
    return rows


def row(name: str, images: int, success: Tensor, l0: Tensor, seconds: float) -> dict[str, object]:
    return {"attack": name, "images": images, "success %": 100 * float(success), "L0 %": 100 * float(l0),
            "seconds": seconds, "samples/s": images / seconds}


# -- 2. source-target grid -------------------------------------------------------------------------


def grid(model: nn.Module, per_class: int) -> tuple[Tensor, Tensor, float, int]:
    from salmap.attacks import all_other_targets

    x, y = correct_images(model, per_class, None)
    xs, ys, targets = all_other_targets(x, y, 10)
    result = JSMA(model, theta=THETA, gamma=GAMMA)(xs, target=targets)
    success = torch.full((10, 10), float("nan"))
    l0 = torch.full((10, 10), float("nan"))
    for s in range(10):
        for t in range(10):
            pick = (ys == s) & (targets == t)
            if pick.any():
                success[s, t] = 100 * float(result.success[pick].float().mean())
                l0[s, t] = 100 * float(result.l0_fraction[pick].mean())
    return success, l0, result.seconds, len(xs)


# -- 3. large inputs (run in a fresh process each) -------------------------------------------------


def large(size: int, candidates: int | None, iterations: int, device: str) -> dict[str, float]:
    torch.manual_seed(0)
    stem = "small" if size <= 64 else "standard"
    model = models.build("resnet18", num_classes=10, stem=stem).eval().to(device)
    x = torch.rand(8, 3, size, size).to(device)
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10
    n = x[0].numel()
    before = peak_rss_kib()
    # gamma fixed so that every sample runs exactly `iterations` pair steps unless it succeeds first
    attack = JSMA(model, theta=THETA, gamma=(2 * iterations + 1) / n, candidates=candidates)
    gpu = torch.device(device).type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    result = attack(x, target=target)
    peak = peak_rss_kib()
    steps = int(result.iterations.max())
    return {"iterations": steps, "seconds_per_iteration": result.seconds / max(steps, 1),
            "peak_rss_gib": peak / 2**20, "rss_before_gib": before / 2**20,
            "peak_cuda_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few images, short large-input runs")
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default: train and cache one)")
    p.add_argument("-n", "--num", type=int, default=None, help="images in the comparison (default 100, quick 10)")
    p.add_argument("--per-class", type=int, default=None, help="grid images per class (default 10, quick 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--peer-num", type=int, default=None,
                   help="the first this many images for the (slow) peers (default: all of -n)")
    p.add_argument("--no-peers", action="store_true", help="skip advertorch, torchattacks and ART")
    p.add_argument("--no-large", action="store_true", help="skip the resnet18 measurements (3.)")
    add_device_flag(p)
    p.add_argument("--large-only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.large_only:
        size, candidates, iterations = json.loads(args.large_only)
        print(json.dumps(large(size, candidates, iterations, args.device)))
        return 0

    device = announce(args.device)
    model = load_lenet(args.model, device)
    num = args.num or (10 if args.quick else 100)
    x, y = correct_images(model, None, num)
    print(f"\n1. lenet on mnist-sample: {len(x)} correctly classified test images, target (y+1) mod 10, "
          f"theta={THETA}, gamma={GAMMA}, {args.threads} threads")
    table = compare(model, x, y, not args.no_peers, min(args.peer_num or len(x), len(x)))
    print_table(table, list(table[0]))

    per_class = args.per_class or (2 if args.quick else 10)
    success, l0, seconds, count = grid(model, per_class)
    print(f"\n2. source-target grid: {per_class} images per class, {count} attacks in {seconds:.1f} s "
          f"({count / seconds:.1f} samples/s); success % (rows: source, columns: target)")
    for name, figures in (("success %", success), ("mean L0 %", l0)):
        print(f"{name:>10} " + " ".join(f"{t:>5d}" for t in range(10)))
        for s in range(10):
            print(f"{s:>10d} " + " ".join("    -" if v != v else f"{v:5.1f}" for v in figures[s].tolist()))
        print()
    off = ~torch.eye(10, dtype=torch.bool)
    print(f"grid mean: success {success[off].mean():.1f} %, L0 {l0[off].mean():.2f} %")

    if args.no_large:
        return 0
    iterations = 2 if args.quick else 5
    print(f"\n3. resnet18, batch 8, {iterations} pair iterations, fresh process each; peak = the process's VmHWM")
    rows = []
    for size in (32, 224):
        for candidates in (None, 1024):
            done = subprocess.run(
                [sys.executable, __file__, "--threads", str(args.threads), "--device", device, "--large-only",
                 json.dumps([size, candidates, iterations])],
                capture_output=True, text=True, check=True,
            )
            fig = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"input": f"3x{size}x{size}", "stem": "small" if size <= 64 else "standard",
                         "search": "exact" if candidates is None else f"candidates={candidates}",
                         "iterations": fig["iterations"], "s/iteration": fig["seconds_per_iteration"],
                         "peak GiB": fig["peak_rss_gib"], "before attack GiB": fig["rss_before_gib"],
                         **({"peak CUDA GiB": fig["peak_cuda_gib"]} if torch.device(device).type == "cuda" else {})})
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
