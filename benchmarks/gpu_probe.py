"""Where the GPU time of occlusion, FGSM and JSMA goes (issue 16): a diagnostic, not a figure of the table.

    python benchmarks/gpu_probe.py [--device cuda] [--out DIR] [--compile] [--only fgsm]

1. a resnet18's forward throughput at 256x3x224x224 in the layouts and precisions occlusion can use;
2. occlusion (salmap fp32 and bf16, captum) and a torch.profiler table of each salmap call;
3. FGSM on 1,000 MNIST-sized images: the host synchronisations of one call, salmap beside torchattacks,
   and what salmap's one read and the host's own time cost;
4. JSMA on a random lenet: where the host time of one call goes (cProfile, top functions).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

import torch
from _timing import interleaved, median, synchronize
from call_cost import resnet_setting
from torch.profiler import ProfilerActivity, profile

from salmap import models
from salmap.attacks import FGSM, JSMA
from salmap.devices import resolve_device
from salmap.explain import Occlusion
from salmap.folding import trace
from salmap.precision import tuned_convolutions


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def profiled(fn: Any, path: Path, title: str) -> None:
    cuda = torch.cuda.is_available()  # on a CPU (a check that the probe runs): the host's side only
    synchronize("cuda" if cuda else "cpu")
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        fn()
        synchronize("cuda" if cuda else "cpu")
    wall = time.perf_counter() - start
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    syncs = {e.key: e.count for e in events if "Synchronize" in e.key or "Memcpy" in e.key or e.key == "aten::item"
             or e.key == "aten::_local_scalar_dense"}
    say(f"{title}: {wall:.3f} s wall under the profiler, GPU kernels {busy:.3f} s; syncs/copies {syncs}")
    with path.open("a") as f:
        f.write(f"== {title}\n")
        f.write(events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70))
        f.write("\n")


def forward_rates(device: str) -> None:
    model, _, _ = resnet_setting(device, 1)
    folded = trace(model, True)
    assert folded is not None
    x = torch.rand(256, 3, 224, 224, device=device)
    xcl = x.contiguous(memory_format=torch.channels_last)
    fmodel = folded.module
    fcl = trace(model, True).module.to(memory_format=torch.channels_last)  # type: ignore[union-attr]

    def run(m: Any, inp: torch.Tensor, dtype: torch.dtype | None = None) -> Any:
        def go() -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                for _ in range(4):
                    m(inp)
        return go

    fns = {
        "fp32 NCHW": run(model, x), "fp32 channels-last": run(model, xcl), "fp32 CL folded": run(fmodel, xcl),
        "fp32 CL folded, CL weights": run(fcl, xcl), "bf16 CL": run(model, xcl, torch.bfloat16),
        "bf16 CL folded, CL weights": run(fcl, xcl, torch.bfloat16), "fp16 CL folded, CL weights": run(fcl, xcl, torch.float16),
    }
    with tuned_convolutions(torch.device(device)):
        times = interleaved(fns, device, repeats=3)
    for name in fns:
        say(f"  resnet18 forward {name}: {4 * 256 / median(times[name]):,.0f} images/s")


def compiled_rate(device: str) -> None:
    model, _, _ = resnet_setting(device, 1)
    fcl = trace(model, True).module.to(memory_format=torch.channels_last)  # type: ignore[union-attr]
    x = torch.rand(256, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    for dtype in (None, torch.bfloat16):
        start = time.perf_counter()
        compiled = torch.compile(fcl, dynamic=False)
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            compiled(x)
            synchronize(device)
            took = time.perf_counter() - start
            begin = time.perf_counter()
            for _ in range(8):
                compiled(x)
            synchronize(device)
        say(f"  torch.compile resnet18 folded CL {dtype or 'fp32'}: compile {took:.1f} s, "
            f"{8 * 256 / (time.perf_counter() - begin):,.0f} images/s")


def occlusion(device: str, out: Path) -> None:
    model, x, y = resnet_setting(device, 8)
    fns: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        occ = Occlusion(model, patch=16, stride=8, fill="zero", batch_size=256, precision=precision)
        fns[f"salmap {precision}"] = (lambda o=occ: o.attribute(x, target=y))
    from captum.attr import Occlusion as CaptumOcclusion

    captum = CaptumOcclusion(model)

    def run_captum() -> None:
        with torch.no_grad():
            captum.attribute(x, sliding_window_shapes=(3, 16, 16), strides=(1, 8, 8), baselines=0.0, target=y,
                             perturbations_per_eval=32)

    fns["captum"] = run_captum
    times = interleaved(fns, device, repeats=2)
    for name in fns:
        say(f"  occlusion {name}: {8 / median(times[name]):.2f} images/s")
    small = x[:2], y[:2]
    for precision in ("fp32", "bf16"):
        occ = Occlusion(model, patch=16, stride=8, fill="zero", batch_size=256, precision=precision)
        profiled(lambda o=occ: o.attribute(small[0], target=small[1]), out / "occlusion_profile.txt",
                 f"salmap occlusion {precision}, 2 images")


def fgsm(device: str, out: Path) -> None:
    import torchattacks

    torch.manual_seed(0)
    model = models.build("lenet").to(device).eval()
    x = torch.rand(1000, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (1000,), device=device)
    ours = FGSM(model, eps=0.3)
    theirs = torchattacks.FGSM(model, eps=0.3)
    for _ in range(3):
        ours(x, y=y)
        theirs(x, y)
    profiled(lambda: ours(x, y=y).x_adv, out / "fgsm_profile.txt", "salmap FGSM, lenet 1000")
    profiled(lambda: theirs(x, y), out / "fgsm_profile.txt", "torchattacks FGSM, lenet 1000")
    fgsm_parts(ours, theirs, x, y, device)


def fgsm_parts(ours: Any, theirs: Any, x: torch.Tensor, y: torch.Tensor, device: str) -> None:
    """Which part of salmap's FGSM call costs what torchattacks' does not: the call with its one
    read (the input's and labels' ranges and the clean outputs' finiteness, after the work)
    replaced by nothing, and the host's time alone (the call returning without waiting for the
    device: equal to the wall time when the host, not the GPU, bounds it)."""
    from salmap.attacks.base import Attack

    def without_read() -> None:
        saved = Attack._check_after_run
        Attack._check_after_run = lambda *args: None  # type: ignore[method-assign]
        try:
            ours(x, y=y)
        finally:
            Attack._check_after_run = saved  # type: ignore[method-assign]

    fns = {
        "salmap": lambda: ours(x, y=y),
        "torchattacks": lambda: theirs(x, y),
        "salmap, no read": without_read,
    }
    times = interleaved(fns, device, repeats=50)
    base_time = median(times["torchattacks"])
    for name in fns:
        say(f"  FGSM {name}: {median(times[name]) * 1e3:.3f} ms, {median(times[name]) / base_time:.3f}x torchattacks")
    for name in ("salmap, no read", "torchattacks"):
        host = []
        for _ in range(50):
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            host.append(time.perf_counter() - start)
            synchronize(device)
        say(f"  FGSM {name}: host time alone (no wait for the device) {median(host) * 1e3:.3f} ms")


def jsma(device: str, out: Path) -> None:
    torch.manual_seed(0)
    model = models.build("lenet").to(device).eval()
    x = torch.rand(1000, 1, 28, 28, device=device)
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10
    attack = JSMA(model, theta=1.0, gamma=0.05)
    attack(x, target=target)
    synchronize(device)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    attack(x, target=target)
    synchronize(device)
    prof.disable()
    say(f"JSMA random lenet 1000 images, gamma 0.05: {time.perf_counter() - start:.3f} s under cProfile")
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumtime").print_stats(45)
    (out / "jsma_cprofile.txt").write_text(text.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="gpu-probe-out")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--only", choices=["forward", "occlusion", "fgsm", "jsma"], default=None,
                   help="run one part only (default: all)")
    args = p.parse_args()
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [("forward rates", lambda: forward_rates(device)), ("occlusion", lambda: occlusion(device, out)),
             ("FGSM syncs", lambda: fgsm(device, out)), ("JSMA host time", lambda: jsma(device, out))]
    if args.only:
        steps = [step for step in steps if step[0].lower().startswith(args.only)]
    if args.compile:
        steps.append(("torch.compile", lambda: compiled_rate(device)))
    for name, step in steps:
        start = time.perf_counter()
        say(f"== {name}")
        try:
            step()
        except Exception as err:  # noqa: BLE001 - a diagnostic goes on
            say(f"{name} FAILED: {type(err).__name__}: {err}")
        say(f"-- {name}: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
