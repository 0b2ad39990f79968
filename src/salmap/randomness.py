"""Per-sample randomness that depends on the sample, not on the batch it is in.

A random start drawn from one generator seeded once per call gives the first sample of
every batch the same noise, and a sample different noise depending on its position in
the batch. Here the noise of a sample is a pure function of ``(seed, stream, the sample's
values)``: a counter-based hash (integer arithmetic only, so it is exact and identical on
every device) of the sample's float32 bits gives the sample a key, and hashing the key
with each feature's index gives that feature's uniform number. Attacking a batch or its
samples one at a time therefore starts from the same points, and two different samples
start from unrelated noise.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_Int = TypeVar("_Int", Tensor, int)


def _mul32(a: _Int, c: int) -> _Int:
    """``(a * c) mod 2**32`` for ``a`` in ``[0, 2**32)``, exact in int64: a multiplier of
    ``2**31`` or more is replaced by ``c - 2**32`` (the same residue), so the product's
    magnitude stays below ``2**63`` and its low 32 bits (two's complement) are the answer."""
    return (a * (c - (1 << 32) if c >= 1 << 31 else c)) & _MASK


def mix32(a: _Int) -> _Int:
    """A 32-bit integer hash with good avalanche (Wellons' ``lowbias32``), on int64 tensors in
    ``[0, 2**32)`` or on Python integers (host arithmetic: no device work for constants)."""
    a = a ^ (a >> 16)
    a = _mul32(a, 0x7FEB352D)
    a = a ^ (a >> 15)
    a = _mul32(a, 0x846CA68B)
    return a ^ (a >> 16)


def _constant(value: int) -> int:
    """A 32-bit hash of a 64-bit integer (the seed, the stream), computed on the host."""
    value &= (1 << 64) - 1
    return mix32(mix32(value & _MASK) ^ (value >> 32))


def sample_keys(x: Tensor, seed: int, stream: int = 0) -> Tensor:
    """One 32-bit key per sample (int64 ``(B,)``), a hash of ``seed``, ``stream`` and the sample's values."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float32).contiguous()
    bits = flat.view(torch.int32).to(torch.int64) & _MASK
    index = torch.arange(flat.shape[1], dtype=torch.int64, device=x.device)
    # Each feature's bits hashed with its position, then summed: < 2**32 * D fits int64 for D < 2**31.
    total = mix32(bits ^ mix32(index + 0x9E3779B9 & _MASK)).sum(dim=1)
    folded = mix32((total & _MASK) ^ mix32(total >> 32))
    key = mix32(folded ^ _constant(seed))
    return mix32(key ^ _constant(stream + 0x51ED27))


def sample_uniform(x: Tensor, seed: int, stream: int = 0) -> Tensor:
    """Uniform noise in ``[0, 1)`` shaped like ``x`` (its dtype and device); each sample's noise
    depends only on ``seed``, ``stream`` and that sample's values (24 random bits per feature).

    Examples
    --------
    >>> x = torch.rand(4, 1, 8, 8)
    >>> torch.equal(sample_uniform(x, 0)[1:2], sample_uniform(x[1:2], 0))
    True
    """
    keys = sample_keys(x, seed, stream)[:, None]
    index = torch.arange(x[0].numel(), dtype=torch.int64, device=x.device)[None, :]
    bits = mix32(mix32(index ^ keys) + keys & _MASK)
    return ((bits >> 8).to(torch.float32) / float(1 << 24)).to(x.dtype).reshape(x.shape)
