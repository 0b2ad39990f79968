"""The occlusion sections of benchmarks/gpu.py: a resnet18 at 224x224, 16x16 patches, stride 8,
salmap's float32 (folded, on regions), float32 unfolded, bfloat16 and float16 beside captum
(section 7), and the cost of a call and of an image (section 10)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from _bench import Bench, say, table
from _timing import interleaved, median, paired_ratio
from occlusion_ops import Count
from torch import Tensor

from salmap import models
from salmap.explain import Occlusion


def occlusion(b: Bench) -> None:
    count, size, patch, stride = (1, 64, 16, 8) if b.quick else (b.args.occlusion_images, 224, 16, 8)
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard").to(b.device).eval()
    x = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0)).to(b.device)
    with torch.no_grad():
        y = model(x).argmax(1)
    batch = 256
    fns: dict[str, Callable[[], Any]] = {}
    maps: dict[str, Tensor] = {}

    def ours(name: str, precision: str, fold: bool = True) -> Callable[[], Any]:
        occ = Occlusion(model, patch=patch, stride=stride, fill="zero", batch_size=batch, precision=precision,
                        fold_batchnorm=fold)

        def run() -> None:
            maps[name] = occ.attribute(x, target=y)

        return run

    # fp32: batch norm folded into the convolutions and the copies run on the patches' regions (the
    # default); unfolded: the model's own arithmetic on every whole copy; bf16/fp16: differences from
    # the clean pass, on the regions
    fns["salmap fp32"] = ours("salmap fp32", "fp32")
    fns["salmap fp32 unfolded"] = ours("salmap fp32 unfolded", "fp32", fold=False)
    for precision in ("bf16", "fp16"):
        fns[f"salmap {precision}"] = ours(f"salmap {precision}", precision)
    try:
        from captum.attr import Occlusion as CaptumOcclusion

        captum = CaptumOcclusion(model)

        def run_captum() -> None:
            with torch.no_grad():
                maps["captum"] = captum.attribute(x, sliding_window_shapes=(3, patch, patch), strides=(1, stride, stride),
                                                  baselines=0.0, target=y, perturbations_per_eval=max(1, batch // count))

        fns["captum"] = run_captum
    except Exception as err:
        say(f"captum: {type(err).__name__}: {err}")
    times = interleaved(fns, b.device, repeats=3, budget=b.left() * 0.6)

    def corr(a: Tensor, c: Tensor) -> float:
        a, c = a.flatten().double(), c.flatten().double()
        a, c = a - a.mean(), c - c.mean()
        return float((a * c).sum() / (a.norm() * c.norm()).clamp_min(1e-30))

    rows = []
    unfolded = maps["salmap fp32 unfolded"]
    for name in fns:
        ips = count / median(times[name])
        row: dict[str, Any] = {"method": name, "images": count, "turns": len(times[name]), "images/s": ips}
        if "captum" in fns and name != "captum":
            row["x captum"] = paired_ratio(times, "captum", name)
            row["max |diff| to captum"] = f"{float((maps[name] - maps['captum']).abs().max()):.2e}"
        if name != "salmap fp32 unfolded":
            row["max |diff| to fp32 unfolded"] = f"{float((maps[name] - unfolded).abs().max()):.2e}"
        if name not in ("salmap fp32 unfolded", "captum"):  # against the model's own float32 arithmetic
            ref = unfolded[:, 0]
            row["corr to fp32 unfolded (min over images)"] = \
                f"{min(corr(maps[name][i, 0], ref[i]) for i in range(count)):.6f}"
        rows.append(row)
    say(f"resnet18 (random weights) {count}x3x{size}x{size}, patch {patch}, stride {stride}, zero fill, "
        f"salmap batch {batch}, captum perturbations_per_eval {max(1, batch // count)}; max |map| "
        f"{float(unfolded.abs().max()):.3g}")
    table(rows)
    # the operators of one more call of each (on a GPU, each launching one is a kernel launch)
    for name in ("salmap fp32", "salmap bf16"):
        with Count() as ops:
            fns[name]()
        say(f"{name}: one call dispatches {ops.dispatched} operators, {ops.launching} launching work")


def occlusion_per_image(b: Bench) -> None:
    """Section 7's occlusion at two numbers of images per call: a call's fixed cost (tracing the
    model, the clean pass, the first image's index plans) and its cost per image, by a line
    through the two medians."""
    size, patch, stride = (64, 16, 8) if b.quick else (224, 16, 8)
    counts = (1, 3) if b.quick else (b.args.occlusion_images, 3 * b.args.occlusion_images)
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard").to(b.device).eval()
    xs = {n: torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(b.device) for n in counts}
    with torch.no_grad():
        ys = {n: model(x).argmax(1) for n, x in xs.items()}
    fns: dict[str, Callable[[], Any]] = {}
    for precision in ("fp32", "bf16"):
        occ = Occlusion(model, patch=patch, stride=stride, fill="zero", batch_size=256, precision=precision)
        for n in counts:
            fns[f"salmap {precision}|{n}"] = lambda o=occ, n=n: o.attribute(xs[n], target=ys[n])
    try:
        from captum.attr import Occlusion as CaptumOcclusion

        captum = CaptumOcclusion(model)
        for n in counts:
            fns[f"captum|{n}"] = lambda n=n: captum.attribute(  # (as in section 7: 16 copies per pass)
                xs[n], sliding_window_shapes=(3, patch, patch), strides=(1, stride, stride), baselines=0.0,
                target=ys[n], perturbations_per_eval=16)
    except Exception as err:
        say(f"captum: {type(err).__name__}: {err}")
    with torch.no_grad():
        times = interleaved(fns, b.device, repeats=3, budget=b.left() * 0.7)
    lo, hi = counts
    rows, per_image = [], {}
    for method in dict.fromkeys(name.split("|")[0] for name in fns):
        t_lo, t_hi = median(times[f"{method}|{lo}"]), median(times[f"{method}|{hi}"])
        per_image[method] = (t_hi - t_lo) / (hi - lo)
        rows.append({"method": method, f"images/s at {lo}": lo / t_lo, f"images/s at {hi}": hi / t_hi,
                     "fixed ms per call": 1e3 * (t_lo - lo * per_image[method]),
                     "ms per image": 1e3 * per_image[method]})
    for row in rows:
        if "captum" in per_image and row["method"] != "captum":
            row["per image x captum"] = per_image["captum"] / per_image[row["method"]]
    table(rows)
