"""Peak memory of one occlusion call: the model's own arithmetic on whole copies against the
region-held differences (whose batches grow after the first). One mode per process, since the
CPU's peak resident set only grows:

    python benchmarks/occlusion_memory.py whole     # fold_batchnorm=False: the model on every copy
    python benchmarks/occlusion_memory.py regions   # the default

A random-weight resnet18 (standard stem), one 3x224x224 image, patch 16, stride 8,
``--batch-size`` 16. Prints the growth of the process's peak resident set (``ru_maxrss``) over
the call, after a warm-up call that loads the code paths.
"""

from __future__ import annotations

import argparse
import gc
import resource

import torch

from salmap import models
from salmap.explain import Occlusion


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["whole", "regions"])
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10, stem="standard").eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fold = args.mode == "regions"
    Occlusion(model, patch=112, stride=112, batch_size=args.batch_size, fold_batchnorm=fold).attribute(x, target=[0])
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Occlusion(model, patch=16, stride=8, batch_size=args.batch_size, fold_batchnorm=fold).attribute(x, target=[0])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{args.mode}: peak resident set grew by {grown:.0f} MiB (batch_size {args.batch_size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
