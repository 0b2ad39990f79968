"""Every figure of the speed table (issue 16) on one device, salmap beside torchattacks and captum.

One run, each section under its own time budget (a section that fails or runs out prints why
and the next one starts), output flushed as it comes:

1. header: device, torch, CUDA, cuDNN, TF32 settings, peer versions;
2. the lenet trained on mnist-sample on the device (cached in ``--cache``), the test images;
3. call cost: FGSM and PGD-40 (eps 0.3) at 1,000 MNIST images and a resnet18 at 64x3x224x224
   beside torchattacks (see benchmarks/call_cost.py);
4. FGSM element-wise beside torchattacks: how many elements differ and the gradient's magnitude
   there, with cuDNN's TF32 off, with deterministic algorithms, with the summed loss salmap used before,
   and across devices (CPU copies of the model);
5. JSMA on the lenet (target y+1, theta 1, gamma 0.145): images/s and peak memory beside
   torchattacks' JSMA, then a torch.profiler summary of one 1,000-image call (``--out``/jsma_profile.txt);
6. JSMA on a resnet18 at 3x224x224, batch 32: seconds per iteration and peak memory
   (torchattacks': what it asks for);
7. occlusion 16x16 / stride 8 on a resnet18 at 224: images/s beside captum's, the maps'
   agreement, and precision bf16/fp16;
8. segmentation JSMA, unet 4x3x256x256, k 64, candidates 1024: seconds per iteration;
9. ISI relevance L0 and sensitivity L0: images/s;
10. section 7's occlusion (fp32, bf16, captum) at ``--occlusion-images`` and three times as many
    images per call: a call's fixed cost and its cost per image.

    python benchmarks/gpu.py [--device auto] [--quick] [--out DIR] [--cache DIR]

``--quick`` shrinks every size (for a CPU check that the script runs). Weights: the lenet is
trained; the resnet18 and the unet have random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _bench import Bench, hard_limit, say, table
from _timing import median, seconds, synchronize
from call_cost import cost_rows, resnet_setting
from gpu_occlusion import occlusion, occlusion_per_image
from torch import Tensor, nn

from salmap import data, models
from salmap.attacks import FGSM, ISI, JSMA, SegmentationJSMA
from salmap.cli.demo import cached_lenet
from salmap.devices import describe_device
from salmap.gradients import frozen, loss_grad

# -- sections ------------------------------------------------------------------------------------------


def header(b: Bench) -> None:
    say(f"device: {describe_device(b.device)}")
    say(f"torch {torch.__version__}, python {sys.version.split()[0]}, {torch.get_num_threads()} CPU threads")
    if b.cuda:
        props = torch.cuda.get_device_properties(b.device)
        say(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.1f} GiB; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark={torch.backends.cudnn.benchmark}")
    for name in ("torchattacks", "captum", "salmap"):
        try:
            module = importlib.import_module(name)
            say(f"{name} {getattr(module, '__version__', '?')} from {Path(module.__file__ or '').parent}")
        except Exception as err:  # a missing peer only removes its rows
            say(f"{name}: not importable ({type(err).__name__}: {err})")


def lenet(b: Bench) -> None:
    start = time.perf_counter()
    n = 100 if b.quick else 1000
    if b.quick:  # a check that the script runs: random weights, no training
        torch.manual_seed(0)
        model = models.build("lenet")
        x, y = data.load("mnist-sample", "test")
        x, y = x[:n], y[:n]
        say("lenet: random weights (--quick)")
    else:
        model, _, test = cached_lenet(Path(b.args.cache) / "lenet", 12, device=b.device)
        x, y = test.x[:n], test.y[:n]
    model = model.to(b.device).eval()
    x, y = x.to(b.device), y.to(b.device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    say(f"lenet ready in {time.perf_counter() - start:.1f} s; {int(correct.sum())} of {n} test images correct")
    b.lenet, b.x, b.y = model, x, y


def call_cost(b: Bench) -> None:
    model, x, y = b.need_lenet()
    steps, repeats = (3, 2) if b.quick else (40, 5)
    rows = cost_rows(model, x, y, b.device, f"lenet {x.shape[0]}x1x28x28", steps, repeats, budget=b.left() / 3)
    table(rows)
    batch = 1 if b.quick else 64
    model, x, y = resnet_setting(b.device, batch)
    rows += cost_rows(model, x, y, b.device, f"resnet18 {batch}x3x224x224", steps, repeats, budget=b.left() / 3,
                      eps=8 / 255)
    table(rows[2:])


def fgsm_agreement(b: Bench) -> None:
    import torchattacks

    model, x, y = b.need_lenet()
    eps = 0.1

    def ours(m: nn.Module, xs: Tensor, ys: Tensor, **kw: Any) -> Tensor:
        return FGSM(m, eps=eps, **kw)(xs, y=ys).x_adv

    def theirs(m: nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
        return torchattacks.FGSM(m, eps=eps)(xs, ys)

    with frozen(model):
        _, grad = loss_grad(model, x, y)
    cpu_model = copy.deepcopy(model).cpu().eval()
    xc, yc = x.cpu(), y.cpu()
    with frozen(cpu_model):
        _, grad_cpu = loss_grad(cpu_model, xc, yc)

    def summed_ce(z: Tensor, t: Tensor) -> Tensor:  # FGSM takes the batch mean: this is the sum's scale
        return torch.nn.functional.cross_entropy(z, t, reduction="none") * t.shape[0]

    def row(name: str, a: Tensor, c: Tensor, g: Tensor) -> dict[str, Any]:
        a, c, g = a.cpu(), c.cpu(), g.cpu().abs()
        differ = a != c
        gap = (a - c).abs()[differ]
        at = g[differ]
        return {
            "comparison": name, "elements": a.numel(), "differ": int(differ.sum()),
            "of which 2eps": int((gap > 1.5 * eps).sum()), "eps": int(((gap > 0.5 * eps) & (gap <= 1.5 * eps)).sum()),
            "max |grad| there": f"{float(at.max()) if at.numel() else 0.0:.3g}",
            "median |grad| there": f"{float(at.median()) if at.numel() else 0.0:.3g}",
            "median |grad|": f"{float(g.median()):.3g}", "max |grad|": f"{float(g.max()):.3g}",
            "grad == 0": int((g == 0).sum()),
        }

    rows = [row("salmap vs torchattacks (this device)", ours(model, x, y), theirs(model, x, y), grad),
            row("salmap (summed loss, before) vs torchattacks", ours(model, x, y, loss_fn=summed_ce),
                theirs(model, x, y), grad)]
    if b.cuda:
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            rows.append(row("... cuDNN/matmul TF32 off", ours(model, x, y), theirs(model, x, y), grad))
            rows.append(row("... TF32 off, summed loss", ours(model, x, y, loss_fn=summed_ce), theirs(model, x, y), grad))
            saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            try:
                rows.append(row("... TF32 off, deterministic", ours(model, x, y), theirs(model, x, y), grad))
            finally:
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
            rows.append(row("salmap GPU (TF32 off) vs salmap CPU", ours(model, x, y), ours(cpu_model, xc, yc), grad_cpu))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        rows.append(row("salmap GPU vs salmap CPU", ours(model, x, y), ours(cpu_model, xc, yc), grad_cpu))
        rows.append(row("torchattacks GPU vs torchattacks CPU", theirs(model, x, y), theirs(cpu_model, xc, yc), grad_cpu))
        rows.append(row("salmap CPU vs torchattacks CPU", ours(cpu_model, xc, yc), theirs(cpu_model, xc, yc), grad_cpu))
        sign_flip = (torch.sign(grad.cpu()) != torch.sign(grad_cpu)) & (grad_cpu != 0) & (grad.cpu() != 0)
        say(f"loss gradient GPU vs CPU: max |difference| {float((grad.cpu() - grad_cpu).abs().max()):.3g}, "
            f"{int(sign_flip.sum())} opposite signs, max |grad| among them {float(grad_cpu.abs()[sign_flip].max()) if sign_flip.any() else 0:.3g}")
    table(rows)


def jsma_lenet(b: Bench) -> None:
    model, x, y = b.need_lenet()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    target = (y + 1) % 10
    attack = JSMA(model, theta=1.0, gamma=0.145)
    attack(x[:50], target=target[:50])  # warm-up
    rows = []
    for n in sorted({min(100, len(x)), len(x)}):
        # the untimed call first: a call at a new size also grows the memory allocator's cache
        # (the profile after the table showed the first 976-image call 1.9 times slower)
        result = attack(x[:n], target=target[:n])
        b.reset_peak()
        took = seconds(lambda n=n: attack(x[:n], target=target[:n]), b.device)
        rows.append({"attack": "salmap JSMA", "images": n, "seconds": took, "images/s": n / took,
                     "peak GiB": b.peak_gib(), "success": result.success_rate,
                     "L0 %": 100 * float(result.l0_fraction.mean()), "iterations max": int(result.iterations.max())})
    try:
        import torchattacks

        m = 1 if b.quick else 8
        ta = torchattacks.JSMA(model, theta=1.0, gamma=0.145)  # its default target: (label + 1) mod 10
        took = seconds(lambda: ta(x[:m], y[:m]), b.device)
        rows.append({"attack": "torchattacks JSMA", "images": m, "seconds": took, "images/s": m / took})
        rows[-1]["salmap speed-up"] = rows[-2]["images/s"] / rows[-1]["images/s"]
    except Exception as err:
        say(f"torchattacks JSMA: {type(err).__name__}: {err}")
    table(rows)
    profile_jsma(b, attack, x, target)


def profile_jsma(b: Bench, attack: JSMA, x: Tensor, target: Tensor) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.cuda else [])
    synchronize(b.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        result = attack(x, target=target)
        synchronize(b.device)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    text = []
    for key in (("device_time_total", "cuda_time_total") if b.cuda else ()) + ("cpu_time_total", "self_cpu_time_total"):
        try:
            text.append(f"-- sorted by {key}\n" + events.table(sort_by=key, row_limit=30))
        except Exception as err:  # sort keys differ between torch versions
            text.append(f"-- sorted by {key}: {type(err).__name__}: {err}")
    (b.out / "jsma_profile.txt").write_text("\n".join(text))
    iterations = int(result.iterations.max())
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = {e.key: e.count for e in events if "Synchronize" in e.key or "Memcpy" in e.key}
    device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    say(f"profiled JSMA call on {x.shape[0]} images: {wall:.3f} s wall under the profiler, {iterations} iterations "
        f"({1e3 * wall / max(iterations, 1):.2f} ms each), {launches} kernel launches "
        f"({launches / max(iterations, 1):.0f} per iteration), GPU kernels busy {device_us / 1e6:.3f} s "
        f"({100 * device_us / 1e6 / wall:.0f}% of wall); sync/copy calls: {syncs}")
    say(text[0][:6000])
    say(f"(the full tables: {b.out / 'jsma_profile.txt'})")


def jsma_resnet(b: Bench) -> None:
    size, batch, iterations = (64, 2, 3) if b.quick else (224, 32, 10)
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard" if size > 64 else "small").to(b.device).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(b.device)
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10
    n = x[0].numel()
    attack = JSMA(model, theta=1.0, gamma=(2 * iterations + 1) / n)
    attack(x[:2], target=target[:2])
    b.reset_peak()
    took = seconds(lambda: attack(x, target=target), b.device)
    rows = [{"attack": "salmap JSMA", "input": f"{batch}x3x{size}x{size}", "iterations": iterations,
             "s/iteration": took / iterations, "peak GiB": b.peak_gib()}]
    total = torch.cuda.get_device_properties(b.device).total_memory if b.cuda else 0
    # torchattacks' JSMA holds an n x n pair matrix per image; where it would fit, it would run for hours.
    if b.cuda and total < 100 * 2**30:
        try:
            import torchattacks

            ta = torchattacks.JSMA(model, theta=1.0, gamma=(2 * iterations + 1) / n)
            ta(x[:1], (target[:1] - 1) % 10)
            rows.append({"attack": "torchattacks JSMA", "input": f"1x3x{size}x{size}", "s/iteration": "ran"})
        except torch.cuda.OutOfMemoryError as err:
            asked = str(err).split(".")[0]
            rows.append({"attack": "torchattacks JSMA", "input": f"1x3x{size}x{size}", "s/iteration": f"OOM: {asked}"})
        torch.cuda.empty_cache()
    else:
        say(f"torchattacks JSMA at {size}: not run (its n x n pair matrix: {n * n * 4 / 2**30:.1f} GiB per image)")
    table(rows)


@contextmanager
def unproven_rows() -> Any:
    """Yields a function giving the fraction of rows of the batched segmentation-JSMA selections
    (:func:`salmap.attacks.seg_saliency.choose_on_device`) that the pool could not prove to the end,
    which go on with the sequential searches (``nan`` when none ran); read once, after the run."""
    from salmap.attacks import seg_saliency

    real, seen = seg_saliency.choose_on_device, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        seen.append(out[3] < args[7])  # first unproven selection < k; kept on the device until the end
        return out

    seg_saliency.choose_on_device = spy
    try:
        yield lambda: float(torch.cat(seen).float().mean()) if seen else float("nan")
    finally:
        seg_saliency.choose_on_device = real


def jsma_seg(b: Bench) -> None:
    batch, size, k, candidates, iterations = (1, 64, 8, 256, 2) if b.quick else (4, 256, 64, 1024, 5)
    torch.manual_seed(0)
    model = models.build("unet", in_channels=3, num_classes=2, base=16, depth=4).to(b.device).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(b.device)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = pred.clone()
    lo, hi = size * 3 // 8, size * 5 // 8
    target[:, lo:hi, lo:hi] = 1 - pred[:, lo:hi, lo:hi]  # a square to flip: not reached in a few iterations
    n = x[0].numel()
    rows = []
    results = {}
    for search in (candidates, None):
        # chunk_size given: the sequential pool searches (one per selection), as on the CPU
        for name, chunk in (("batched", None), ("sequential", max(1, (1 << 24) // (batch * n)))):
            attack = SegmentationJSMA(model, gamma=0.1, k=k, candidates=search, max_iterations=iterations,
                                      chunk_size=chunk)
            SegmentationJSMA(model, gamma=0.1, k=k, candidates=search, max_iterations=1, chunk_size=chunk)(
                x, target=target)
            took = seconds(lambda a=attack: a(x, target=target), b.device)
            with unproven_rows() as redone:
                result = attack(x, target=target)
            results[(search, name)] = result.x_adv
            steps = int(result.iterations.max())
            rows.append({"selections": name, "candidates": search, "input": f"{batch}x3x{size}x{size}", "k": k,
                         "iterations": steps, "s/iteration": took / max(steps, 1),
                         "pixel acc": float(result.extra["pixel_accuracy"].mean()),
                         # rows of the batched selections that went on with the sequential searches
                         "rows redone": redone() if name == "batched" else None})
            say(f"  {rows[-1]}")
            if b.left() < 0:
                break
    with frozen(model):
        vjps = median([seconds(lambda: attack.derivatives(x, target, 2), b.device) for _ in range(3)])
    say(f"forward + VJPs of one iteration: {vjps:.4f} s")
    if (None, "batched") in results and (None, "sequential") in results:
        same = torch.equal(results[(None, "batched")], results[(None, "sequential")])
        say(f"exact search: batched and sequential selections give identical x_adv: {same}")
    table(rows)


def isi(b: Bench) -> None:
    model, x, y = b.need_lenet()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    rows = []
    for indicator in ("relevance", "sensitivity"):
        attack = ISI(model, indicator=indicator, norm="l0", max_iter=30)
        attack(x[:20], y=y[:20])
        took = seconds(lambda a=attack: a(x, y=y), b.device)
        rows.append({"attack": f"ISI {indicator} L0", "images": len(x), "seconds": took, "images/s": len(x) / took})
    table(rows)


SECTIONS: list[tuple[str, Callable[[Bench], None], float]] = [
    ("header", header, 20),
    ("lenet", lenet, 60),
    ("call cost: FGSM and PGD beside torchattacks", call_cost, 60),
    ("FGSM element-wise beside torchattacks", fgsm_agreement, 20),
    ("JSMA lenet, profile", jsma_lenet, 45),
    ("JSMA resnet18 224", jsma_resnet, 25),
    ("occlusion resnet18 224 beside captum", occlusion, 50),
    ("segmentation JSMA unet 256", jsma_seg, 40),
    ("ISI L0", isi, 20),
    ("occlusion per call and per image", occlusion_per_image, 45),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a check that the script runs)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-bench-out"), help="folder for the profile tables")
    p.add_argument("--cache", default=str(Path(__file__).resolve().parent / ".cache" / "gpu"),
                   help="where the trained lenet is cached")
    p.add_argument("--only", default=None, help="comma-separated section numbers to run (1-based; default all)")
    p.add_argument("--occlusion-images", type=int, default=16, help="images of the occlusion section (default 16)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every section's time budget")
    args = p.parse_args()
    b = Bench(args)
    wanted = None if args.only is None else {int(v) for v in args.only.split(",")}
    start = time.perf_counter()
    for number, (name, fn, budget) in enumerate(SECTIONS, 1):
        if wanted is not None and number not in wanted and number > 2:
            continue
        budget *= args.scale * (20 if b.quick and not b.cuda else 1)  # a CPU --quick check is slow, not short
        say(f"\n== {number}. {name} (budget {budget:.0f} s)")
        begin = time.perf_counter()
        b.deadline = begin + budget
        try:
            with hard_limit(2 * budget + 30):
                fn(b)
        except Exception as err:  # one section's failure must not cost the others
            say(f"{number}. {name} FAILED: {type(err).__name__}: {err}")
            traceback.print_exc(limit=4, file=sys.stdout)
            if b.cuda:
                torch.cuda.empty_cache()
        say(f"-- {number}. {name}: {time.perf_counter() - begin:.1f} s")
    say(f"\nall sections: {time.perf_counter() - start:.1f} s on {describe_device(b.device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
