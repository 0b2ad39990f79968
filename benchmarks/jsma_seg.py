"""Benchmark of SegmentationJSMA on mnist-seg, and its cost on a 3x256x256 unet.

On ``-n`` mnist-seg test images with the trained unets: hide-the-digit and add-a-digit
(binary unet), relabel-the-digit (multi-class unet), each with ``map="masked"`` and
``map="jsma"``: success rate at ``required``, mean L0 %, seconds per image, and the
fraction of images that spent the whole budget (the others stopped at success or with no
admissible change left). The unets are trained and cached on first use (see
:data:`RECIPES`). Then a 3x256x256 input through a unet: seconds per iteration and peak
memory (measured in a fresh process, so that the figure is that of the attack alone; on a
GPU also the peak of CUDA memory allocated). Everything runs on ``--device`` (default
``auto``: CUDA when available, else the CPU); the unets are trained there too.

    python benchmarks/jsma_seg.py [--quick] [--model PATH] [--model-multi PATH] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _device import add_device_flag, announce
from _memory import peak_rss_kib
from _timing import synchronize

from salmap import data, models
from salmap.attacks.jsma_seg import SegmentationJSMA, predict_masks
from salmap.cli.attack_seg import goal_targets
from salmap.cli.train_seg import build_segmenter, segmentation_metrics, train_segmenter
from salmap.gradients import frozen

#: How the benchmark's unets are trained; a cached unet trained otherwise is trained again.
#: The multi-class unet must tell the ten digits apart, not only find their strokes: twice
#: the width of the binary one and a cosine schedule (about 5 minutes on one core).
RECIPES: dict[str, dict[str, Any]] = {
    "mnist-seg": {"base": 8, "depth": 3, "epochs": 3, "cosine": False},
    "mnist-seg-multi": {"base": 16, "depth": 3, "epochs": 5, "cosine": True},
}


def cached_unet(folder: Path, dataset: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The unet trained on ``dataset`` by its recipe in :data:`RECIPES`, cached in ``folder``."""
    recipe = RECIPES[dataset]
    if (folder / "model.json").is_file():
        model, meta = models.load_with_meta(folder)
        arch, training = meta.get("arch", {}).get("kwargs", {}), meta.get("training") or {}
        if (training.get("data") == dataset and arch.get("base") == recipe["base"]
                and arch.get("depth") == recipe["depth"] and training.get("epochs") == recipe["epochs"]
                and bool(training.get("cosine", False)) == recipe["cosine"] and not training.get("init")):
            return model.to(device), meta
        print(f"{folder}: trained with another recipe, training again ({recipe})", flush=True)
    train, test = data.load_dataset(dataset, "train"), data.load_dataset(dataset, "test")
    torch.manual_seed(0)
    model, meta = build_segmenter("unet", train, base=recipe["base"], depth=recipe["depth"])
    model = model.to(device)
    report = train_segmenter(model, train, test, epochs=recipe["epochs"], seed=0, progress=False,
                             cosine=recipe["cosine"])
    meta["metrics"] = {**report.test_metrics, "seconds": report.seconds}
    meta["training"] = {"data": dataset, "seed": 0, **recipe}
    models.save(model, folder, meta)
    print(f"{folder}: trained in {report.seconds:.0f} s, test mean IoU {report.test_metrics['mean_iou']:.4f}",
          flush=True)
    return model.eval(), meta


def large(k: int, candidates: int, iterations: int, local: bool, device: str) -> dict[str, float | None]:
    """Seconds per iteration and peak RSS of the attack on one 3x256x256 image (run in a fresh process).

    Also the seconds of the forward pass and two VJPs alone (the rest of an iteration is the
    pair search). ``local=False`` searches all 196,608 features, not only those under the
    wrong pixels.
    """
    torch.manual_seed(0)
    model = models.build("unet", in_channels=3, num_classes=2, base=16, depth=4).eval().to(device)
    x = torch.rand(1, 3, 256, 256).to(device)
    pred = predict_masks(model, x)
    target = pred.clone()
    target[:, 96:160, 96:160] = 1 - pred[:, 96:160, 96:160]  # flip a 64x64 square: never reached in a few steps
    before = peak_rss_kib()
    gpu = torch.device(device).type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    attack = SegmentationJSMA(model, gamma=0.1, k=k, candidates=candidates, max_iterations=iterations, local=local)
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = attack(x, target=target)
    synchronize(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = peak_rss_kib()
    peak_cuda = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    with frozen(model):
        synchronize(device)
        start_vjps = time.perf_counter()
        attack.derivatives(x, target, 2)
        synchronize(device)
        vjps = time.perf_counter() - start_vjps
    return {
        "forward_vjps_seconds": vjps,
        "iterations": int(result.iterations[0]), "seconds_per_iteration": seconds / max(int(result.iterations[0]), 1),
        "cpu_seconds_per_iteration": cpu / max(int(result.iterations[0]), 1),
        "features_per_iteration": 2 * k, "peak_rss_gib": peak / 2**20, "rss_before_gib": before / 2**20,
        "peak_cuda_gib": peak_cuda,
    }


#: Extra settings per goal, beside the two maps' defaults: relabelling keeps the digit's shape
#: while changing its class, which small steps on softmax scores anywhere in the image reach
#: more often than saturating steps under the wrong pixels.
VARIANTS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "relabel": (("jsma probabilities theta=0.3 all features",
                 {"map": "jsma", "probabilities": True, "theta": 0.3, "local": False}),),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 images, 1 large iteration")
    p.add_argument("--model", default="/work/cache/unet-seg", help="binary unet checkpoint (trained if missing)")
    p.add_argument("--model-multi", default="/work/cache/unet-seg-multi", help="multi-class unet checkpoint")
    p.add_argument("-n", "--num", type=int, default=100, help="test images (default 100)")
    p.add_argument("--k", type=int, default=4, help="pairs per iteration on mnist-seg (default 4)")
    p.add_argument("--gamma", type=float, default=0.1, help="feature budget (default 0.1)")
    p.add_argument("--required", type=float, default=0.99, help="required pixel accuracy (default 0.99)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--goals", default="hide,add,relabel", help="comma-separated goals (default hide,add,relabel)")
    p.add_argument("--no-large", action="store_true", help="skip the 3x256x256 measurement")
    add_device_flag(p)
    p.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--large-global", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    large_iterations = 1 if args.quick else 3
    if args.large_only:
        print(json.dumps(large(k=64, candidates=1024, iterations=large_iterations, local=not args.large_global,
                               device=args.device)))
        return 0
    device = announce(args.device)
    n = 10 if args.quick else args.num
    rows = []
    for goal, folder, dataset in (("hide", args.model, "mnist-seg"), ("add", args.model, "mnist-seg"),
                                  ("relabel", args.model_multi, "mnist-seg-multi")):
        if goal not in args.goals.split(","):
            continue
        model, meta = cached_unet(Path(folder), dataset, device)
        test = data.load_dataset(dataset, "test").subset(n)
        x = test.x.to(device)
        quality = segmentation_metrics(model, x, test.y, test.num_classes)
        pred = predict_masks(model, x)
        target = goal_targets(goal, pred, test.num_classes)
        for label, settings in (("masked", {"map": "masked"}), ("jsma", {"map": "jsma"}), *VARIANTS.get(goal, ())):
            attack = SegmentationJSMA(model, gamma=args.gamma, required=args.required, k=args.k, **settings)
            result = attack(x, target=target)
            rows.append({
                "goal": goal, "map": label, "images": n, "unet_mIoU": quality["mean_iou"],
                "success": result.success_rate, "L0_%": 100 * float(result.l0_fraction.mean()),
                "L0_%_success": 100 * float(result.l0_fraction[result.success].mean()) if result.success.any()
                else float("nan"),
                "pix_acc": float(result.extra["pixel_accuracy"].mean()),
                "IoU_target": float(result.extra["iou_target"].mean()),
                "budget_spent": float(result.extra["budget_spent"].float().mean()),
                "iters": float(result.iterations.float().mean()), "s/image": result.seconds / n,
            })
            print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    if args.no_large:
        return 0
    print()
    print("3x256x256 unet (base 16, depth 4), pairs, k=64 (128 features/iteration), candidates=1024, "
          "a 64x64 square to flip:")
    for domain, flag in (("local (default)", []), ("all features", ["--large-global"])):
        done = subprocess.run([sys.executable, __file__, "--large-only", "--threads", str(args.threads),
                               "--device", device, *flag]
                              + (["--quick"] if args.quick else []), capture_output=True, text=True, check=True)
        big = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  domain {domain}: {big['seconds_per_iteration']:.2f} s/iteration "
              f"({big['cpu_seconds_per_iteration']:.2f} CPU s; forward + 2 VJPs {big['forward_vjps_seconds']:.2f} s) "
              f"over {big['iterations']} iterations, peak memory {big['peak_rss_gib']:.2f} GiB "
              f"(process peak RSS; {big['rss_before_gib']:.2f} GiB before the attack"
              + (f"; peak CUDA memory allocated {big['peak_cuda_gib']:.2f} GiB)" if big["peak_cuda_gib"] is not None
                 else ")"))
    return 0


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
