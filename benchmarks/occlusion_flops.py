"""The arithmetic of one occlusion map beside captum's: multiply-adds of convolutions and
matrix products (``torch.utils.flop_counter``), per image, for salmap's region-held copies (the
default: only the part of each layer that the patch reaches is computed again), salmap on whole
copies (``fold_batchnorm=False``: the model's own arithmetic on every copy) and captum (called as
``benchmarks/gpu.py`` calls it: a forward pass of the whole model per patch position and one of
the image).

A bound, not a timing: where a GPU is bound by its arithmetic, no method runs faster than the
ratio of these counts at equal efficiency; where it is bound by launches or memory, the counts
say nothing. Elementwise work (ReLU, additions, batch normalisation) is not counted.

    python benchmarks/occlusion_flops.py [--size 224] [--patch 16] [--stride 8] [--device auto]

A random-weight resnet18 (standard stem, 10 classes), zero fill, one image (the counts do not
depend on the device; on a CPU the two salmap calls take about a minute).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from call_cost import resnet_setting
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry

from salmap.cli.common import print_table
from salmap.devices import describe_device, resolve_device
from salmap.explain import Occlusion


class Flops(TorchDispatchMode):
    """The FLOPs of the operators torch's flop counter has formulas for (convolutions, matrix
    products, and ``conv2d``, which the traced graphs of salmap call as such), counted at dispatch:
    ``FlopCounterMode`` itself registers global module hooks, and with those registered salmap
    runs the model as it is (no folding, no regions)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket is torch.ops.aten.conv2d:  # called as such by traced graphs; no formula
            self.total += int(conv_flop_count(list(args[0].shape), list(args[1].shape), list(out.shape)))
            return out
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **(kwargs or {}), out_val=out))
        return out


def counted(fn: Any) -> int:
    with Flops() as counter:
        fn()
    return counter.total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}")
    model, x, y = resnet_setting(device, 1, args.size)
    side = (args.size - args.patch) // args.stride + 1
    with torch.no_grad():
        forward = counted(lambda: model(x))
    rows = []
    try:
        from captum.attr import Occlusion as CaptumOcclusion

        captum = CaptumOcclusion(model)

        def run_captum() -> None:  # as benchmarks/gpu.py calls it
            with torch.no_grad():
                captum.attribute(x, sliding_window_shapes=(3, args.patch, args.patch), baselines=0.0, target=y,
                                 strides=(1, args.stride, args.stride), perturbations_per_eval=16)

        flops = counted(run_captum)
        rows.append({"method": "captum", "forward passes": round(flops / forward, 1), "GFLOP per image": flops / 1e9})
    except ImportError as err:
        print(f"captum: {err}")
    for name, fold in (("salmap, region-held copies (default)", True), ("salmap, whole copies", False)):
        occlusion = Occlusion(model, patch=args.patch, stride=args.stride, fill="zero", batch_size=256,
                              fold_batchnorm=fold)
        flops = counted(lambda o=occlusion: o.attribute(x, target=y))
        rows.append({"method": name, "forward passes": round(flops / forward, 1), "GFLOP per image": flops / 1e9})
    for row in rows:
        row["x captum's"] = rows[0]["GFLOP per image"] / row["GFLOP per image"] if len(rows) == 3 else float("nan")
    print(f"resnet18 at {args.size}x{args.size}, patch {args.patch}, stride {args.stride} ({side * side} positions); "
          f"one forward pass: {forward / 1e9:.3f} GFLOP")
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
