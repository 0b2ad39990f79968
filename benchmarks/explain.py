"""Explanation throughput and peak memory; occlusion against captum.attr.Occlusion.

Per method (gradient saliency, occlusion, Grad-CAM, LRP when available):

- ``mnist``: the first ``-n`` (100) mnist-sample test images with the trained lenet
  (``--model``, else /work/cache/lenet, else trained once and cached); occlusion with
  patch 4, stride 2, zero fill; Grad-CAM on ``features.7`` (the last convolution).
- ``224``: ``--n224`` (16) uniform random 3x224x224 images (seed 0) with a resnet34 of
  random weights (seed 0; throughput and equality do not depend on trained weights);
  occlusion with patch 16, stride 8, zero fill; Grad-CAM on ``layer4``.

Figures: images per second (best of ``--repeat`` runs after a warm-up on one image; occlusion
at 224: one run, no warm-up) and peak memory above the level before the call (CPU: the
process's resident-set high-water mark, reset through /proc/self/clear_refs, with glibc made
to return freed memory; CUDA: ``torch.cuda.max_memory_allocated``).

Occlusion is also run through ``captum.attr.Occlusion`` on the same inputs with the same
conventions: ``sliding_window_shapes=(C, k, k)``, ``strides=(1, s, s)``, ``baselines=0``
and the true-label target. Captum divides each feature's summed score drop by the number of
windows that ablated it (``use_weights``), as salmap does, and both place the windows at
``0, s, 2s, ...`` because the strides divide ``size - patch`` here (28-4 and 224-16), so the
maps must agree: the max abs difference is printed. Captum runs with
``perturbations_per_eval`` = 1 (its default) and with as many perturbations per forward
pass as salmap's batch (``--captum-ppe``); the ratio is salmap's throughput over captum's best.

Salmap's occlusion runs with batch norm folded into the convolutions (its default;
``--no-fold-batchnorm``: the model's own arithmetic) in ``--occlusion-precision`` (fp32).

Run: ``python benchmarks/explain.py [--quick] [--model /work/cache/lenet] [-n 100] [--n224 16]``.
``--quick``: 20 MNIST images, 2 images at 224 (1 for occlusion), one repeat.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _device import add_device_flag, announce
from torch import Tensor

from salmap import data, models
from salmap.cli.common import print_table
from salmap.explain import GradCAM, GradientSaliency, Occlusion


def lenet(path: str | None, cache: Path) -> torch.nn.Module:
    """The trained lenet: ``--model``, else /work/cache/lenet, else trained once and cached."""
    for candidate in ([path] if path else []) + ["/work/cache/lenet"]:
        if candidate and (Path(candidate) / "model.json").is_file():
            return models.load(candidate)
    from salmap.cli.demo import cached_lenet

    return cached_lenet(cache, epochs=10)[0]


def _exact_rss() -> None:
    """Make glibc return freed blocks to the system, so that the RSS high-water mark measures a call.

    A fixed mmap threshold stops glibc from raising it after large frees (which would keep
    big tensors' memory in the heap); ``malloc_trim`` releases what is free now.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def measure(fn: Callable[[Tensor, Tensor], Any], x: Tensor, y: Tensor, repeat: int,
            device: torch.device, warm: bool = True) -> tuple[float, float | None, Any]:
    """(images per second, peak MiB above the starting level or None, the result) of ``fn(x, y)``."""
    if warm:
        fn(x[:1], y[:1])  # warm-up: lazy imports, allocator, kernels
    best = float("inf")
    peak: float | None = None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_mem = torch.cuda.memory_allocated()
        else:
            _exact_rss()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
            except OSError:
                pass
            start_mem = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        result = fn(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - start_mem) / 2**20
        else:
            hwm = _rss_kib("VmHWM")
            if hwm is not None and start_mem is not None:
                peak = max(peak or 0.0, (hwm - start_mem) / 1024)
    return x.shape[0] / best, peak, result


def emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep ``row`` for the final table and show it at once (the full run takes a while)."""
    rows.append(row)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if v != ""),
          file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few images, one repeat")
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default /work/cache/lenet)")
    p.add_argument("-n", "--num", type=int, default=None, help="mnist-sample images (default 100, quick 20)")
    p.add_argument("--n224", type=int, default=None, help="3x224x224 images (default 16, quick 2)")
    p.add_argument("--n224-occlusion", type=int, default=None,
                   help="3x224x224 images for occlusion and captum (default --n224; quick 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per figure (default 2, quick 1)")
    p.add_argument("--batch-size", type=int, default=128, help="occluded copies per forward pass (default 128)")
    p.add_argument("--captum-ppe", type=int, default=None, help="captum perturbations_per_eval besides 1 "
                   "(default: salmap's batch size / images)")
    p.add_argument("--no-captum", action="store_true", help="skip captum")
    p.add_argument("--occlusion-precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="salmap occlusion's precision (default fp32)")
    p.add_argument("--no-fold-batchnorm", action="store_true",
                   help="salmap occlusion without batch norm folded into the convolutions (the model's own arithmetic)")
    p.add_argument("--settings", default="mnist,224", help="which settings to run (default mnist,224)")
    add_device_flag(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.num or (20 if args.quick else 100)
    n224 = args.n224 or (2 if args.quick else 16)
    n224_occ = args.n224_occlusion or (1 if args.quick else n224)
    repeat = args.repeat or (1 if args.quick else 2)
    device = torch.device(announce(args.device))
    try:
        from salmap.explain import LRP
    except ImportError:
        LRP = None  # noqa: N806

    net = lenet(args.model, Path(".cache/bench-lenet")).to(device).eval()
    x, y = data.load("mnist-sample", "test")
    x, y = x[:n].to(device), y[:n].to(device)
    torch.manual_seed(0)
    resnet = models.build("resnet34", num_classes=1000).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(n224, 3, 224, 224, generator=gen).to(device)
    with torch.no_grad():
        big_y = resnet(big).argmax(dim=1)

    settings = [
        ("mnist", net, x, y, (4, 2), "features.7"),
        ("224", resnet, big, big_y, (16, 8), "layer4"),
    ]
    rows: list[dict[str, Any]] = []
    wanted = set(args.settings.split(","))
    for name, model, inputs, labels, (patch, stride), layer in settings:
        if name not in wanted:
            continue
        methods: dict[str, Any] = {
            "gradient": GradientSaliency(model),
            "gradcam": GradCAM(model, layer=layer),
        }
        if LRP is not None:
            methods["lrp"] = LRP(model)
        for method, explainer in methods.items():
            ips, peak, _ = measure(lambda i, t, e=explainer: e.attribute(i, target=t), inputs, labels,
                                   repeat, device)
            emit(rows, {"setting": name, "method": method, "images": inputs.shape[0], "images_per_s": ips,
                         "peak_MiB": peak, "captum_images_per_s": "", "ratio": "", "max_abs_diff": ""})

        occ_x, occ_y = (inputs, labels) if name == "mnist" else (inputs[:n224_occ], labels[:n224_occ])
        # occlusion at 224 takes minutes per image on a CPU: one timed run, no warm-up
        heavy_repeat = repeat if name == "mnist" else 1
        occ = Occlusion(model, patch=patch, stride=stride, fill="zero", batch_size=args.batch_size,
                        precision=args.occlusion_precision, fold_batchnorm=not args.no_fold_batchnorm)
        ips, peak, ours = measure(lambda i, t, o=occ: o.attribute(i, target=t), occ_x, occ_y, heavy_repeat, device,
                                  warm=name == "mnist")
        label = f"occlusion k={patch} s={stride} {args.occlusion_precision}" + (" unfolded" if args.no_fold_batchnorm else "")
        row: dict[str, Any] = {"setting": name, "method": label,
                               "images": occ_x.shape[0], "images_per_s": ips, "peak_MiB": peak,
                               "captum_images_per_s": "", "ratio": "", "max_abs_diff": ""}
        emit(rows, row)
        if not args.no_captum:
            from captum.attr import Occlusion as CaptumOcclusion

            captum = CaptumOcclusion(model)
            ppe_default = args.captum_ppe or max(1, args.batch_size // occ_x.shape[0])
            best_captum, diff = 0.0, 0.0
            for ppe in sorted({1, ppe_default}):
                def run_captum(i, t, ppe=ppe, c=captum, k=patch, s=stride):
                    with torch.no_grad():
                        return c.attribute(i, sliding_window_shapes=(i.shape[1], k, k),
                                           strides=(1, s, s), baselines=0.0, target=t,
                                           perturbations_per_eval=ppe)

                cips, cpeak, theirs = measure(run_captum, occ_x, occ_y, heavy_repeat, device,
                                              warm=name == "mnist")
                diff = max(diff, float((ours - theirs).abs().max()))
                emit(rows, {"setting": name, "method": f"  captum ppe={ppe}", "images": occ_x.shape[0],
                             "images_per_s": cips, "peak_MiB": cpeak, "captum_images_per_s": "", "ratio": "",
                             "max_abs_diff": f"{float((ours - theirs).abs().max()):.2e}"})
                best_captum = max(best_captum, cips)
            row.update(captum_images_per_s=best_captum, ratio=ips / best_captum, max_abs_diff=f"{diff:.2e}")

    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"lenet: trained; resnet34: random weights, random 224x224 inputs")
    print_table(rows, ["setting", "method", "images", "images_per_s", "peak_MiB", "captum_images_per_s", "ratio",
                       "max_abs_diff"])


if __name__ == "__main__":
    main()
