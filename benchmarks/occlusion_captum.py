"""Occlusion beside captum's on one device, paired turn by turn: a resnet18 (standard stem, random
weights, 10 classes) on random 3x224x224 images, 16x16 patches, stride 8, zero fill: the setting of
``benchmarks/gpu.py``'s occlusion section, for a CPU (where that section's 16 images take an hour).

    python benchmarks/occlusion_captum.py [--images 1] [--threads 2] [--turns 3] [--precision fp32] [--device cpu]

Prints both medians, captum's time over salmap's (the median over turns of the ratio within a
turn) and the largest difference between the maps. Captum evaluates 16 occluded copies per
forward pass (``perturbations_per_eval=16``), salmap ``batch_size=256``.
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved, median, paired_ratio

from salmap import models
from salmap.devices import describe_device, resolve_device
from salmap.explain import Occlusion


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = p.parse_args()
    from captum.attr import Occlusion as CaptumOcclusion

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard").to(device).eval()
    x = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = Occlusion(model, patch=16, stride=8, fill="zero", batch_size=256, precision=args.precision)
    captum = CaptumOcclusion(model)
    maps: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        maps["salmap"] = ours.attribute(x, target=y)

    def run_captum() -> None:
        with torch.no_grad():
            maps["captum"] = captum.attribute(x, sliding_window_shapes=(3, 16, 16), strides=(1, 8, 8), baselines=0.0,
                                              target=y, perturbations_per_eval=16)

    times = interleaved({"salmap": run_ours, "captum": run_captum}, device, repeats=args.turns)
    print(f"device: {describe_device(device)}; threads {torch.get_num_threads()}, images {args.images}, "
          f"turns {len(times['captum'])}, salmap {args.precision}")
    print(f"salmap {median(times['salmap']):.2f} s, captum {median(times['captum']):.2f} s, "
          f"captum/salmap paired {paired_ratio(times, 'captum', 'salmap'):.3f}, "
          f"max |diff| {float((maps['salmap'] - maps['captum']).abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
