"""What a call of FGSM and PGD-40 costs beside torchattacks' call on the same model and images.

Rows: salmap's call (which returns the result with the adversarial prediction deferred until
``success`` is read), salmap's call followed by reading ``success`` (one more forward pass),
and torchattacks' call (which returns only the images); ratios are medians of the per-turn
ratios, the attacks taking turns (A B C A B C ...). The ops columns count the operators one call
dispatches (on a GPU, each is a kernel launch). Settings: the lenet on ``-n`` mnist-sample
test images (trained weights from ``--model``, else random weights: the cost does not depend
on them) and a random-weight resnet18 on ``--batch224`` random 3x224x224 images.

    python benchmarks/call_cost.py [--device auto] [-n 1000] [--batch224 64] [--steps 40] [--repeats 5] [--fgsm-repeats 50]
    python benchmarks/call_cost.py --device cpu --threads 1 --clock process   # on a shared CPU machine
    python benchmarks/call_cost.py --device cpu --threads 1 --clock process -n 1 --batch224 1 --size 32 \
        --steps 10 --calls 50   # what a call costs besides its arithmetic
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _timing import interleaved, median, paired_ratio
from torch import Tensor, nn

from salmap import data, models
from salmap.attacks import FGSM, PGD
from salmap.cli.common import print_table
from salmap.devices import describe_device, resolve_device


def lenet_setting(device: str, n: int, path: str | None = None) -> tuple[nn.Module, Tensor, Tensor]:
    """The lenet (trained from ``path``, else random weights) and ``n`` mnist-sample test images."""
    torch.manual_seed(0)
    model = models.load(path) if path else models.build("lenet")
    x, y = data.load("mnist-sample", "test")
    return model.to(device).eval(), x[:n].to(device), y[:n].to(device)


def resnet_setting(device: str, batch: int, size: int = 224) -> tuple[nn.Module, Tensor, Tensor]:
    """A random-weight resnet18 (standard stem, 10 classes), random 3xSIZExSIZE images, its own predictions."""
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard").to(device).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def dispatched_ops(fn: Any) -> int:
    """Operators one call of ``fn`` dispatches (after one warm-up call): on a GPU each is a launch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops += 1
            return func(*args, **(kwargs or {}))

    fn()
    with Count() as count:
        fn()
    return count.ops


def cost_rows(
    model: nn.Module, x: Tensor, y: Tensor, device: str, setting: str, steps: int = 40, repeats: int = 5,
    budget: float | None = None, eps: float = 0.3, clock: str = "wall", calls: int = 1,
    fgsm_repeats: int | None = None,
) -> list[dict[str, Any]]:
    """FGSM and PGD-``steps``: salmap beside torchattacks, interleaved medians in ms and ratios
    (``calls`` calls per timed turn; the times are per call). FGSM takes ``fgsm_repeats`` turns
    (default ten times ``repeats``): a call of a few milliseconds needs many for a steady median."""
    import torchattacks

    step = eps / 10
    cases = {
        "FGSM": (FGSM(model, eps=eps), torchattacks.FGSM(model, eps=eps)),
        f"PGD-{steps}": (PGD(model, eps=eps, step=step, steps=steps),
                         torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)),
    }
    rows = []
    for name, (ours, theirs) in cases.items():
        one = {
            "torchattacks": lambda a=theirs: a(x, y),
            "salmap": lambda a=ours: a(x, y=y),
            "salmap+success": lambda a=ours: a(x, y=y).success,
        }
        fns = {name: (lambda f=f: [f() for _ in range(calls)]) for name, f in one.items()}
        turns = (fgsm_repeats or 10 * repeats) if name == "FGSM" else repeats
        times = interleaved(fns, device, repeats=turns, budget=budget, clock=clock)
        times = {name: [t / calls for t in ts] for name, ts in times.items()}
        rows.append({
            "setting": setting, "attack": name, "turns": len(times["salmap"]),
            "salmap ops": dispatched_ops(one["salmap"]), "torchattacks ops": dispatched_ops(one["torchattacks"]),
            "salmap ms": 1e3 * median(times["salmap"]), "torchattacks ms": 1e3 * median(times["torchattacks"]),
            "ratio": paired_ratio(times, "salmap", "torchattacks"),
            "+success ms": 1e3 * median(times["salmap+success"]),
            "ratio +success": paired_ratio(times, "salmap+success", "torchattacks"),
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default: random weights)")
    p.add_argument("-n", "--num", type=int, default=1000, help="mnist-sample test images (default 1000; 0: skip)")
    p.add_argument("--batch224", type=int, default=64, help="3x224x224 images for the resnet18 (0: skip)")
    p.add_argument("--size", type=int, default=224, help="the resnet18's image size (default 224)")
    p.add_argument("--calls", type=int, default=1,
                   help="calls per timed turn (default 1; many calls of a tiny batch measure what a call costs "
                        "besides its arithmetic, the regime of a GPU, on a CPU)")
    p.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    p.add_argument("--steps224", type=int, default=None, help="PGD steps at 224 (default --steps)")
    p.add_argument("--repeats", type=int, default=5, help="timed turns (default 5)")
    p.add_argument("--fgsm-repeats", type=int, default=None, help="FGSM's timed turns (default ten times --repeats)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall time, or this process's CPU time (steadier on a shared CPU machine; use --threads 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {describe_device(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"times: {args.clock} clock, medians of {args.repeats} turns")
    rows = []
    if args.num:
        model, x, y = lenet_setting(device, args.num, args.model)
        rows += cost_rows(model, x, y, device, f"lenet {x.shape[0]}x1x28x28", args.steps, args.repeats,
                          clock=args.clock, calls=args.calls, fgsm_repeats=args.fgsm_repeats)
    if args.batch224:
        model, x, y = resnet_setting(device, args.batch224, args.size)
        rows += cost_rows(model, x, y, device, f"resnet18 {x.shape[0]}x3x{args.size}x{args.size}",
                          args.steps224 or args.steps, args.repeats, eps=8 / 255, clock=args.clock, calls=args.calls,
                          fgsm_repeats=args.fgsm_repeats)
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
