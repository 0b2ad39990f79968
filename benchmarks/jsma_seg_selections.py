"""What the pair selections of segmentation JSMA cost per iteration, batched and sequential, and
how often the batched selections' proofs hold.

1. The unet of ``benchmarks/gpu.py`` section 8 (random weights, base 16, depth 4, 4x3x256x256,
   a 64x64 square to flip), k 64, candidates 1024 (``--exact``: none): per iteration, the
   operators dispatched (all, and those of the selections per selection), the host reads
   (``item()``, ``nonzero``, boolean-mask indexing), wall and CPU seconds, with the batched
   selections (:func:`salmap.attacks.seg_saliency.choose` with ``batched=True``, the CUDA
   default, forced on any device) and with the sequential pool searches (``batched=False``,
   the CPU default). Per-iteration figures are differences between runs of 1 and
   ``1 + --iterations`` iterations, so the call's fixed costs drop out.
2. The fraction of rows whose batched selections the pool could not prove exact to the end
   (they go on with the sequential searches), there and on the trained mnist-seg unet of
   ``benchmarks/jsma_seg.py`` (cached; trained on first use), hide and add goals, local and
   all-features domains, ``-n`` test images, k 4, exact search.

    python benchmarks/jsma_seg_selections.py [--device auto] [--exact] [--iterations 2] [-n 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _device import add_device_flag, announce
from _timing import synchronize
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import salmap.attacks.jsma_seg as jsma_seg
import salmap.attacks.seg_saliency as seg_saliency
from salmap import data, models
from salmap.attacks.jsma_seg import SegmentationJSMA, predict_masks
from salmap.cli.attack_seg import goal_targets

#: What reads a device value back to the host (a synchronisation on a GPU).
READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.index[bool]", "aten.masked_select", "aten.index_put[bool]"}


class Recorder(TorchDispatchMode):
    """The operators dispatched while active, and how many of them the selections dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.in_choose = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
            isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            name = "aten.index[bool]" if name == "aten.index" else "aten.index_put[bool]"
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextmanager
def selections(batched: bool, recording: dict[str, Recorder]) -> Iterator[list[Tensor]]:
    """SegmentationJSMA with the batched selections forced on or off; yields, per batched call,
    the rows' proof failures and whether they choose anything (bool ``(2, rows)``), and counts the selections' operators into
    ``recording["rec"]`` while it is there."""
    real_choose, real_device = seg_saliency.choose, seg_saliency.choose_on_device
    unproven: list[Tensor] = []

    def choose(*args: Any, **kwargs: Any) -> Any:
        rec = recording.get("rec")
        before = len(rec.ops) if rec is not None else 0
        out = real_choose(*args, **{**kwargs, "batched": batched})
        if rec is not None:
            rec.in_choose += len(rec.ops) - before
        return out

    def on_device(*args: Any, **kwargs: Any) -> Any:
        out = real_device(*args, **kwargs)
        # this version: the first unproven selection per row (< k: unproven); older: a bool per row.
        # Rows that choose nothing (allowed 0) do not count (older versions never passed them).
        unproven.append(torch.stack([out[3] if out[3].dtype == torch.bool else out[3] < args[7], args[6] > 0]))
        return out

    jsma_seg.choose, seg_saliency.choose_on_device = choose, on_device
    try:
        yield unproven
    finally:
        jsma_seg.choose, seg_saliency.choose_on_device = real_choose, real_device


def fraction(unproven: list[Tensor]) -> float:
    """The fraction of the rows choosing something that were not proven to the end."""
    if not unproven:
        return float("nan")
    flags, choosing = torch.cat(unproven, dim=1)
    return float((flags & choosing).sum() / choosing.sum().clamp(min=1))


def choosing_rows(unproven: list[Tensor]) -> int:
    return int(sum(int(u[1].sum()) for u in unproven))


def large(device: str, candidates: int | None, extra: int) -> None:
    torch.manual_seed(0)
    model = models.build("unet", in_channels=3, num_classes=2, base=16, depth=4).eval().to(device)
    x = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    pred = predict_masks(model, x)
    target = pred.clone()
    target[:, 96:160, 96:160] = 1 - pred[:, 96:160, 96:160]
    k = 64
    print(f"unet base 16 depth 4 (random weights), 4x3x256x256, k {k}, candidates {candidates}, "
          f"per iteration (runs of 1 and {1 + extra} iterations):")
    for batched in (True, False):
        figures: dict[int, tuple[float, ...]] = {}
        for iterations in (1, 1 + extra):
            attack = SegmentationJSMA(model, gamma=0.1, k=k, candidates=candidates, max_iterations=iterations)
            rec = Recorder()
            recording = {"rec": rec}
            with selections(batched, recording) as unproven:
                with rec:
                    attack(x, target=target)
                del recording["rec"]
                synchronize(device)
                wall, cpu = time.perf_counter(), time.process_time()
                attack(x, target=target)
                synchronize(device)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            reads = sum(op in READS for op in rec.ops)
            figures[iterations] = (len(rec.ops), rec.in_choose, reads, wall, cpu, fraction(unproven))
        ops, in_choose, reads, wall, cpu = ((figures[1 + extra][i] - figures[1][i]) / extra for i in range(5))
        print(f"  {'batched' if batched else 'sequential':10s}: {ops:7.0f} operators ({in_choose / k:6.1f} per "
              f"selection), {reads:4.0f} host reads, {wall:6.2f} s ({cpu:6.2f} CPU s)"
              + (f", rows not proven to the end {figures[1 + extra][5]:.2f}" if batched else ""), flush=True)


def mnist_seg(device: str, folder: str, count: int, max_iterations: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from jsma_seg import cached_unet

    model, _ = cached_unet(Path(folder), "mnist-seg", device)
    test = data.load_dataset("mnist-seg", "test").subset(count)
    x = test.x.to(device)
    pred = predict_masks(model, x)
    print(f"mnist-seg unet (trained), {count} images 1x64x64, k 4, exact: rows not proven to the end")
    for goal in ("hide", "add"):
        target = goal_targets(goal, pred, test.num_classes)
        for local in (True, False):
            attack = SegmentationJSMA(model, gamma=0.1, k=4, local=local, max_iterations=max_iterations)
            with selections(True, {}) as unproven:
                result = attack(x, target=target)
            print(f"  {goal:4s} {'local' if local else 'all features':12s}: {fraction(unproven):.3f} of "
                  f"{choosing_rows(unproven)} rows over {int(result.iterations.max())} iterations", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exact", action="store_true", help="exact search (default: candidates 1024)")
    p.add_argument("--iterations", type=int, default=2, help="extra iterations measured (default 2)")
    p.add_argument("-n", "--num", type=int, default=20, help="mnist-seg test images (default 20)")
    p.add_argument("--max-iterations", type=int, default=30, help="iterations per mnist-seg image at most")
    p.add_argument("--model", default="/work/cache/unet-seg", help="binary mnist-seg unet (trained if missing)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--skip-large", action="store_true", help="only the mnist-seg part")
    p.add_argument("--skip-mnist", action="store_true", help="only the 4x3x256x256 part")
    add_device_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = announce(args.device)
    if not args.skip_large:
        large(device, None if args.exact else 1024, args.iterations)
    if not args.skip_mnist:
        mnist_seg(device, args.model, args.num, args.max_iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
