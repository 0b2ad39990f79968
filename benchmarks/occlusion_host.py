"""The host's time for one repeated occlusion call, with next to no arithmetic: what a GPU's host
spends launching a call (the device waits for it wherever the queue runs dry), measured on a CPU.

A resnet18 of width 1 (channels 1, 2, 4, 8 instead of 64, 128, 256, 512: the same graph and
activation sizes, so the same operators per call; about a thousandth of the arithmetic) on
``--images`` random 3x224x224 images, 16x16 patches, stride 8, zero fill, ``batch_size=256``,
as in ``benchmarks/gpu.py``'s occlusion section. One explainer is called ``--warmup`` times, then
``--calls`` calls are timed on the process clock; the median is printed, in milliseconds per
call, with the operators one call dispatches. Compare two commits by running this in each
checkout in turn (``PYTHONPATH=<checkout>/src``), several times: a paired comparison on a
shared machine.

    python benchmarks/occlusion_host.py [--images 16] [--precision fp32] [--calls 7] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from occlusion_ops import Count

from salmap import models
from salmap.explain import Occlusion


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16, help="images per call (default 16)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--calls", type=int, default=7, help="timed calls (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard", width=1).eval()
    x = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    occlusion = Occlusion(model, patch=16, stride=8, fill="zero", batch_size=256, precision=args.precision)
    for _ in range(args.warmup):
        occlusion.attribute(x)
    times = []
    for _ in range(args.calls):
        start = time.process_time()
        occlusion.attribute(x)
        times.append(time.process_time() - start)
    with Count() as count:
        occlusion.attribute(x)
    print(f"{1e3 * statistics.median(times):.1f} ms per call; {count.dispatched} operators dispatched, "
          f"{count.launching} launching work")


if __name__ == "__main__":
    main()
