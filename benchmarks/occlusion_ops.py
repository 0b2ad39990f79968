"""The operators one occlusion call dispatches, and how many of them launch work (on a GPU, a
kernel each; views and no-op conversions launch nothing): for one image, and for each further
image of a call (its batch of copies after the first image's, when the region-held copies'
index arithmetic is kept for the batch layout).

    python benchmarks/occlusion_ops.py [--stride 8] [--size 224] [--device auto]
    python benchmarks/occlusion_ops.py --images 16 [--batch-size 256] [--precision bf16]

A random-weight resnet18 (standard stem), 16x16 patches, zero fill, one batch per image. With
``--images N``: instead, the operators of one warmed call on N images with ``--batch-size``
(``benchmarks/gpu.py``'s occlusion section: 16 images, 256; about 3 minutes per call on a
2-core CPU), its batches of region-held copies grown as on CUDA on any device.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from call_cost import resnet_setting
from torch.utils._python_dispatch import TorchDispatchMode

from salmap.devices import describe_device, resolve_device
from salmap.explain import Occlusion, occlusion_windows

#: operators that launch nothing (views, aliases, metadata; allocations without values)
VIEWS = {"permute", "unsqueeze", "select", "slice", "view", "reshape", "_unsafe_view", "expand", "unbind", "t",
         "detach", "alias", "squeeze", "flatten", "as_strided", "promote_types", "_reshape_alias",
         "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "result_type"}
#: conversions that return their input unchanged when it is already in the asked dtype and layout
CONVERSIONS = {"to", "contiguous", "type_as"}


class Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.dispatched = 0
        self.launching = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.dispatched += 1
        # a view, or a conversion that returns its input, launches nothing (an in-place operation
        # returns its input too, and launches)
        name = func.__name__.split(".")[0]
        if name not in VIEWS and not (name in CONVERSIONS and any(out is a for a in args)):
            self.launching += 1
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=0, help="count one warmed call on this many images instead")
    p.add_argument("--batch-size", type=int, default=256, help="with --images (default 256)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}")
    if args.images:
        occlusion_windows.grows = lambda device: True  # (the batches of region-held copies as on CUDA)
        model, x, y = resnet_setting(device, args.images, args.size)
        occlusion = Occlusion(model, patch=16, stride=args.stride, fill="zero", batch_size=args.batch_size,
                              precision=args.precision)
        occlusion.attribute(x, target=y)  # (the trace, and the batch layouts' plans kept for the next call)
        with Count() as call:
            occlusion.attribute(x, target=y)
        print(f"a warmed call on {args.images} images, batch_size {args.batch_size}, {args.precision}: "
              f"{call.dispatched} operators dispatched, {call.launching} launching work")
        return 0
    model, x, y = resnet_setting(device, 2, args.size)
    occlusion = Occlusion(model, patch=16, stride=args.stride, fill="zero", batch_size=4096, precision=args.precision)
    occlusion.attribute(x[:1], target=y[:1])  # (loads the code paths)
    with Count() as one:
        occlusion.attribute(x[:1], target=y[:1])
    with Count() as two:
        occlusion.attribute(x, target=y)
    print(f"one image: {one.dispatched} operators dispatched, {one.launching} launching work")
    print(f"each further image: {two.dispatched - one.dispatched} dispatched, "
          f"{two.launching - one.launching} launching work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
