"""The per-sample hash behind random starts: exact integer arithmetic, checked against plain Python."""

from __future__ import annotations

import torch

from salmap.randomness import mix32, sample_keys, sample_uniform


def _mix32_reference(a: int) -> int:
    """Wellons' lowbias32 written with Python's unbounded integers (the definition)."""
    a ^= a >> 16
    a = (a * 0x7FEB352D) % 2**32
    a ^= a >> 15
    a = (a * 0x846CA68B) % 2**32
    return a ^ (a >> 16)


def test_mix32_on_tensors_equals_the_integer_definition() -> None:
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9] + torch.randint(
        0, 2**32, (2000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64).tolist()
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_mix32_reference(v) for v in values]
    assert [mix32(v) for v in values] == got  # on Python integers too


def test_noise_is_a_function_of_the_sample_not_the_batch() -> None:
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    batch = sample_uniform(x, seed=7, stream=2)
    for i in range(6):
        assert torch.equal(batch[i : i + 1], sample_uniform(x[i : i + 1], seed=7, stream=2))
    assert 0.0 <= float(batch.min()) and float(batch.max()) < 1.0
    keys = sample_keys(x, seed=7).tolist()
    assert len(set(keys)) == 6 and all(0 <= k < 2**32 for k in keys)
    assert not torch.equal(sample_uniform(x, seed=8, stream=2), batch)
    assert not torch.equal(sample_uniform(x, seed=7, stream=3), batch)


def _constant_reference(value: int) -> int:
    value %= 2**64
    return _mix32_reference(_mix32_reference(value % 2**32) ^ (value >> 32))


def test_keys_and_noise_equal_their_integer_definition() -> None:
    """sample_keys and sample_uniform written out with Python integers, feature by feature."""
    import struct

    x = torch.rand(3, 2, 3, 2, generator=torch.Generator().manual_seed(4))
    x[1, 0, 0, 0] = -0.0  # a sign bit: the bits are read as unsigned
    seed, stream = 11, 5
    keys = sample_keys(x, seed, stream).tolist()
    noise = sample_uniform(x, seed, stream)
    for b, sample in enumerate(x.reshape(3, -1).tolist()):
        bits = [struct.unpack("<I", struct.pack("<f", v))[0] for v in sample]
        total = sum(bit * _mix32_reference((i + 0x9E3779B9) % 2**32) % 2**32 for i, bit in enumerate(bits))
        folded = (total ^ (total >> 32)) % 2**32
        salt = _constant_reference(_constant_reference(seed) ^ _constant_reference(stream + 0x51ED27))
        key = _mix32_reference(folded ^ salt)
        assert keys[b] == key
        want = [(_mix32_reference(_mix32_reference((i + 0x2545F491) % 2**32) ^ key) >> 8) / 2**24
                for i in range(len(bits))]
        assert noise[b].flatten().tolist() == want
