"""Peak memory of one occlusion call: the model's own arithmetic on whole copies against the
region-held differences (whose batches grow after the first):

    python benchmarks/occlusion_memory.py whole     # fold_batchnorm=False: the model on every copy
    python benchmarks/occlusion_memory.py regions   # the default

A random-weight resnet18 (standard stem), one 3x224x224 image, patch 16, stride 8,
``--batch-size`` 16. Prints two figures: the peak of the bytes of the tensors the call's
operators create that are alive at once (exact, and the same in every run: a storage counts
while a tensor an operator returned on it is alive; the index plans the regions keep count),
and the growth of the process's peak resident set (``ru_maxrss``) over the call, after a
warm-up call that loads the code paths (noisy: it depends on what the allocator kept from
the warm-up; one mode per process, since it only grows).
"""

from __future__ import annotations

import argparse
import gc
import resource
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from salmap import models
from salmap.explain import Occlusion


class LiveTensors(TorchDispatchMode):
    """The bytes of the storages the block's operators create that are alive at once, and their
    peak: a storage counts from the operator that made it until the last tensor an operator
    returned on it dies (views and in-place results share their input's storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage address -> [tensors alive on it, bytes]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in inputs and key not in self.refs:
                continue  # (a view of a tensor made before the block)
            entry = self.refs.get(key)
            if entry is None:
                entry = self.refs[key] = [0, storage.nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]


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
    occlusion = Occlusion(model, patch=16, stride=8, batch_size=args.batch_size, fold_batchnorm=fold)
    with LiveTensors() as live:
        occlusion.attribute(x, target=[0])
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    occlusion.attribute(x, target=[0])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{args.mode}: tensors alive at once at most {live.peak / 2**20:.0f} MiB; "
          f"peak resident set grew by {grown:.0f} MiB (batch_size {args.batch_size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
