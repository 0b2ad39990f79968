"""ISI's ranking and L2 rules side by side: the figures quoted in ``salmap.attacks.isi``'s docstring.

On the first ``-n`` mnist-sample test images (untargeted, LRP relevance, 30 iterations), for
the lenet of ``--model`` (default: trained once like ``salmap demo``'s and cached):

- L2 (``n_features=10``, ``eps=0.1``): the authors' rule (centred relevance, towards the
  middle), the same with steps of ``eps / 2`` (the authors' step in their ``[-1, 1]`` units),
  and the gradient-signed rule;
- L0: salmap's ranking ``(x - b) g~`` against ranking by the relevance ``R`` itself (the
  authors' ranking) with the same moves, and how many adversarial images are identical.

Run: ``python benchmarks/isi_rules.py [--model runs/lenet] [-n 100] [--device auto]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _device import add_device_flag, announce
from torch import Tensor

from salmap import data, models
from salmap.attacks import ISI, AttackResult
from salmap.explain.lrp import lrp_relevance


class _HalfStep(ISI):
    """The authors' L2 rule with every move halved (their eps in [-1, 1] units)."""

    def significance(self, x: Tensor, labels: Tensor, targeted: bool, plan=None):  # type: ignore[no-untyped-def]
        out, sig, direction = super().significance(x, labels, targeted, plan)
        return out, sig, direction / 2


class _RankedByRelevance(ISI):
    """L0 ranked by the LRP relevance R itself, with salmap's moves."""

    def significance(self, x: Tensor, labels: Tensor, targeted: bool, plan=None):  # type: ignore[no-untyped-def]
        out, _, direction = super().significance(x, labels, targeted, plan)

        def cotangent(o: Tensor) -> Tensor:  # F = Z_y, the untargeted objective
            return torch.nn.functional.one_hot(labels, o.shape[1]).to(o.dtype)

        _, relevance, _ = lrp_relevance(self.model, x, cotangent, self._composite, plan)
        return out, relevance, direction


def line(name: str, r: AttackResult) -> str:
    return (f"{name:<42} success {r.success_rate:6.1%}  L2 {float(r.l2.mean()):5.2f}  "
            f"Linf {float(r.linf.mean()):5.2f}  L0 {float(r.l0.mean()):6.1f}  "
            f"iterations {float(r.iterations.float().mean()):5.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default: train and cache one)")
    p.add_argument("-n", "--num", type=int, default=100, help="test images (default 100)")
    p.add_argument("--threads", type=int, default=2)
    add_device_flag(p)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "salmap-bench" / "lenet"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model = models.load(args.model)
    else:
        from salmap.cli.demo import cached_lenet

        model, _, _ = cached_lenet(Path(args.cache), epochs=12)
    device = announce(args.device)
    model = model.to(device).eval()
    x, y = data.load("mnist-sample", split="test")
    x, y = x[: args.num].to(device), y[: args.num].to(device)
    print(f"{args.num} mnist-sample test images, untargeted, relevance, 30 iterations")
    l2 = {"norm": "l2", "eps": 0.1, "n_features": 10}
    print(line("L2 authors' rule (default)", ISI(model, **l2)(x, y=y)))
    print(line("L2 authors' rule, steps of eps / 2", _HalfStep(model, **l2)(x, y=y)))
    print(line("L2 gradient-signed", ISI(model, l2_rule="gradient", **l2)(x, y=y)))
    ours = ISI(model, norm="l0")(x, y=y)
    theirs = _RankedByRelevance(model, norm="l0")(x, y=y)
    print(line("L0 ranked by (x - b) g~ (salmap)", ours))
    print(line("L0 ranked by R (the authors' ranking)", theirs))
    same = int((ours.x_adv == theirs.x_adv).flatten(1).all(dim=1).sum())
    print(f"identical adversarial images: {same} of {args.num}")


if __name__ == "__main__":
    main()
