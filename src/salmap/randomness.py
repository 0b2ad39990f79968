"""Per-sample randomness that depends on the sample, not on the batch it is in.

A random start drawn from one generator seeded once per call gives the first sample of
every batch the same noise, and a sample different noise depending on its position in
the batch. Here the noise of a sample is a pure function of ``(seed, stream, the sample's
values)``: a hash (integer arithmetic only, so it is exact and identical on every device)
of the sample's float32 bits gives the sample a key, and hashing the key with each
feature's index gives that feature's uniform number. The per-index hashes are computed
once per size and device, so a call costs about thirty tensor operations. Attacking a batch or its
samples one at a time therefore starts from the same points, and two different samples
start from unrelated noise.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=16)
def _feature_hashes(count: int, device: torch.device, salt: int) -> Tensor:
    """``mix32(i + salt)`` for the feature indices ``i < count``: int64 ``(count,)`` on ``device``,
    computed once per size and device (the per-call work is then a few operations)."""
    index = torch.arange(count, dtype=torch.int64, device=device)
    return mix32((index + salt) & _MASK)


def _signed(weights: Tensor) -> Tensor:
    """32-bit ``weights`` as the int64 residues of least magnitude (see :func:`_mul32`), so that a
    product with a value below ``2**32`` stays below ``2**63`` in magnitude."""
    return torch.where(weights >= 1 << 31, weights - (1 << 32), weights)


def sample_keys(x: Tensor, seed: int, stream: int = 0) -> Tensor:
    """One 32-bit key per sample (int64 ``(B,)``): a hash of ``seed``, ``stream`` and the sample's values.

    The sample's float32 bits ``b_i`` are combined as ``sum_i (b_i * w_i mod 2**32)`` with fixed
    pseudo-random weights ``w_i = mix32(i + salt)``, whose high and low halves are folded together
    and mixed with the host hash of ``seed`` and ``stream``.
    """
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float32).contiguous()
    weights = _signed(_feature_hashes(flat.shape[1], flat.device, 0x9E3779B9))
    bits = flat.view(torch.int32).to(torch.int64) & _MASK
    # Each term is below 2**32, so the sum of D of them fits int64 for D < 2**31.
    total = (bits.mul_(weights) & _MASK).sum(dim=1)
    return mix32(((total ^ (total >> 32)) & _MASK) ^ _constant(_constant(seed) ^ _constant(stream + 0x51ED27)))


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
    # Feature i of a sample: mix32(h_i ^ key), h_i = mix32(i + salt): both mixes are bijections,
    # so the 32-bit numbers of one sample's features are distinct (their top 24 bits, the noise,
    # may repeat), and lowbias32's avalanche decorrelates the numbers of different keys.
    bits = mix32(_feature_hashes(x[0].numel(), x.device, 0x2545F491)[None, :] ^ keys)
    return ((bits >> 8).to(torch.float32) * (1.0 / (1 << 24))).to(x.dtype).reshape(x.shape)
