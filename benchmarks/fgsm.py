"""FGSM on the trained lenet: adversarial accuracy per eps, and the cost of one FGSM batch
relative to one forward+backward pass of the same batch (the physical limit is about 1.0).

    python benchmarks/fgsm.py [--model DIR] [--n 1000] [--repeats 5] [--device auto]

Without --model, the demo's cached lenet (salmap-demo/lenet) is used or trained.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from _timing import seconds

from salmap import data, models
from salmap.attacks import FGSM
from salmap.cli.demo import cached_lenet
from salmap.devices import describe_device, resolve_device
from salmap.gradients import frozen, loss_grad, predict

EPS = (0.1, 0.2, 0.25, 0.3)
DEVICE = ["cpu"]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(seconds(fn, DEVICE[0]) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder of a trained lenet")
    parser.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    args = parser.parse_args()
    device = resolve_device(args.device)
    DEVICE[0] = device

    model = models.load(args.model) if args.model else cached_lenet(Path("salmap-demo/lenet"), 12)[0]
    model = model.to(device)
    x, y = data.load("mnist-sample", "test")
    x, y = x[: args.n].to(device), y[: args.n].to(device)
    clean = float((predict(model, x).argmax(1) == y).float().mean())
    print(f"device {describe_device(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{x.shape[0]} images")
    print(f"{'eps':>5}  {'clean acc':>9}  {'adv acc':>7}  {'success':>7}  {'mean L2':>7}  {'seconds':>7}")
    for eps in EPS:
        r = FGSM(model, eps=eps)(x, y=y)
        adv = float((r.pred_after == y).float().mean())
        print(f"{eps:>5}  {clean:>9.4f}  {adv:>7.4f}  {r.success_rate:>7.4f}  {float(r.l2.mean()):>7.3f}  {r.seconds:>7.3f}")

    attack = FGSM(model, eps=0.1)
    fgsm_time = median_time(lambda: attack(x, y=y), args.repeats)

    def forward_backward() -> None:
        with frozen(model):
            loss_grad(model, x, y)

    fb_time = median_time(forward_backward, args.repeats)
    print(f"one FGSM batch of {x.shape[0]}: {fgsm_time * 1e3:.1f} ms; one forward+backward: {fb_time * 1e3:.1f} ms; "
          f"ratio {fgsm_time / fb_time:.2f} (includes input checks, the clean and adversarial predictions)")
    try:
        import torchattacks

        peer = torchattacks.FGSM(model, eps=0.1)
        peer_time = median_time(lambda: peer(x, y), args.repeats)
        print(f"torchattacks.FGSM same batch: {peer_time * 1e3:.1f} ms (it returns only the images)")
    except Exception as err:  # the peer is optional
        print(f"torchattacks not available: {type(err).__name__}: {err}")


if __name__ == "__main__":
    main()
