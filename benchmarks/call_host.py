"""The host's time for one repeated attack call on a tiny batch: microseconds per call.

With one image the device's work is small and the host's (validation, bookkeeping, launching
the kernels) is most of a call, as on a GPU; compare two commits by running this in each
checkout in turn (``PYTHONPATH=<checkout>/src``): a paired comparison on a shared machine. One
attack instance is called ``--warmup`` times, then ``--blocks`` blocks of ``--calls`` calls are
timed on the process clock; the median block is printed, in microseconds per call. A whole
process is now and then much slower (about 1.5 times here, seen in two of nine runs on this machine):
run each checkout several times in turn and compare the medians.

    python benchmarks/call_host.py [--attack fgsm] [--device cpu] [--batch 1] [--blocks 15] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from salmap import models
from salmap.attacks import FGSM, PGD
from salmap.devices import resolve_device


def per_call_us(attack: str, device: str, batch: int, blocks: int, calls: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = models.build("lenet").to(device).eval()
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    run = FGSM(model, eps=0.3) if attack == "fgsm" else PGD(model, eps=0.3, step=0.03, steps=10)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        run(x, y=y)
    sync()
    times = []
    for _ in range(blocks):
        start = time.process_time()
        for _ in range(calls):
            run(x, y=y)
        sync()
        times.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attack", choices=["fgsm", "pgd10"], default="fgsm")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--batch", type=int, default=1, help="images of 1x28x28 per call (default 1)")
    p.add_argument("--blocks", type=int, default=15, help="timed blocks (default 15)")
    p.add_argument("--calls", type=int, default=200, help="calls per block (default 200)")
    p.add_argument("--warmup", type=int, default=50, help="untimed calls first (default 50)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    us = per_call_us(args.attack, device, args.batch, args.blocks, args.calls, args.warmup)
    print(f"{us:.1f}")


if __name__ == "__main__":
    main()
