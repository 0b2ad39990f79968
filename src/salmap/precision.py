"""Arithmetic precision and convolution settings for the forward passes of explainers and attacks.

``precision="fp32"`` (every default) computes in the input's dtype. ``"bf16"`` and ``"fp16"``
run the model under :func:`torch.autocast` with bfloat16 or float16 (matrix products and
convolutions in 16 bits, reductions and softmax kept in float32 by autocast): about twice the
throughput of TF32 on a recent GPU. bfloat16 has float32's range and 8 bits of mantissa
(scores good to two or three significant digits); float16 has 11 bits (about eight times
more precise) but overflows above 65504, which activations of eval-mode classifiers rarely
reach. Both are opt-in. CPU autocast supports both (fast on CPUs with AMX, slow elsewhere).
Occlusion runs a traceable model's 16-bit passes on differences from the clean pass instead
(:mod:`salmap.explain.occlusion_deltas`), which keeps its maps close to float32's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from salmap._validate import check_choice

#: The values of every ``precision`` parameter.
PRECISIONS = ("fp32", "bf16", "fp16")
#: The dtype of each 16-bit precision.
LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(value: str) -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming ``precision``."""
    return check_choice("precision", value, PRECISIONS)


@contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``precision`` on ``device`` (``"fp32"``: unchanged)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=LOW_DTYPES[precision]):
        yield


@contextmanager
def tuned_convolutions(device: torch.device) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution algorithms for each new shape (``cudnn.benchmark``)
    for the block, then restore the caller's setting. Worth it when one shape repeats many times."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


#: Spatial size (pixels) from which the CPU's convolutions run faster channels-last: measured on
#: a resnet18 on a 2-core Xeon (oneDNN), 5% slower at 96x96, 6% faster at 128x128, 18% at 224x224.
CPU_CHANNELS_LAST_PIXELS = 112 * 112


def prefers_channels_last(x: Tensor) -> bool:
    """Whether convolutions on batches like ``x`` run faster in the channels-last layout: 4-D
    batches on CUDA (cuDNN's fastest kernels take it without transposing) and, on the CPU,
    4-D float32, bfloat16 or float16 batches of at least :data:`CPU_CHANNELS_LAST_PIXELS` pixels
    (oneDNN's; smaller images run faster as they are). Values and shape are the same either
    way; only the order of the sums inside a convolution may differ."""
    if x.dim() != 4:
        return False
    if x.is_cuda:
        return True
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and x.shape[2] * x.shape[3] >= CPU_CHANNELS_LAST_PIXELS)


def in_layout(x: Tensor, channels_last: bool, copy: bool = False) -> Tensor:
    """``x`` in the channels-last layout when ``channels_last``, else unchanged; ``copy``: always a
    new tensor (for a model that may write into its input)."""
    out = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return out.clone() if copy and out is x else out
