"""Prenet dropout masks made on the device from a counter-based hash of (item seed, step, unit).

ttskit keeps prenet dropout on at inference, so every decoder step needs a fresh 0 / 1/(1-p) mask per item. Drawing
them from a torch.Generator per item on the CPU and copying them over cost a quarter of the batch-32 budget on a GPU
(gpu-review point 2). Here a mask element is a pure function of (item key, step, unit): made where it is used, in a
few elementwise kernels per block of steps, with no generator state and no host copy, so it can run inside a captured
CUDA graph, and the dynamic loop and the static chunk call the same function and get the same masks.

The hash is the 32-bit integer permutation found with Wellons' hash-prospector that improves on his lowbias32
(xor-shift 16, multiply 0x21f0aaad, xor-shift 15, multiply 0x735a2d97, xor-shift 15: a bijection of 32-bit values with
near-ideal avalanche), applied to the counter and again after the item's
key is mixed in, in int64 arithmetic: every value stays in [0, 2^32) and both multipliers are below 2^31, so every
product stays below 2^63, nothing overflows, and CPU and CUDA give identical bits.
"""
from __future__ import annotations

from typing import Sequence

import torch

MASK_32 = 0xFFFFFFFF
_M1, _M2 = 0x21F0AAAD, 0x735A2D97  # both below 2^31: a value below 2^32 times either stays below 2^63
_SEED_SALT = 0x9E3779B9  # keeps seed 0 away from the hash's fixed point at 0


def hash32(x: torch.Tensor) -> torch.Tensor:
    """The permutation above on int64 values in [0, 2^32): a bijection of that range (logical shifts, as x >= 0)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & MASK_32
    x ^= x >> 15
    x = (x * _M2) & MASK_32
    x ^= x >> 15
    return x


def item_keys(seeds: Sequence[int], device) -> torch.Tensor:
    """(B,) int64 per-item keys from Utterance seeds (any Python int: its low 32 bits count)."""
    raw = torch.tensor([(int(s) ^ _SEED_SALT) & MASK_32 for s in seeds], dtype=torch.long)
    return hash32(raw).to(device)


def unit_offsets(steps: int, units: int, device) -> torch.Tensor:
    """(steps, 2, units) int64 counters (k * 2 + layer) * units + unit of a block of steps starting at step 0."""
    return torch.arange(steps * 2 * units, dtype=torch.long, device=device).view(steps, 2, units)


def prenet_masks(keys: torch.Tensor, first_step, offsets: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, K, 2, units) masks for steps first_step .. first_step + K - 1: 0 (dropped, probability p) or 1/(1-p).

    keys: (B,) from item_keys. first_step: an int or a (1,) int64 device tensor (the static chunk's position).
    offsets: unit_offsets(K, units). Element (b, k, layer, unit) depends only on keys[b], first_step + k, layer, unit.
    """
    steps, layers, units = offsets.shape
    counters = offsets + first_step * (layers * units)  # < 2^21 for 2000 steps x 2 x 256 units
    # the counter hashed before the key joins: with key ^ counter alone, two items whose keys differ by a small d
    # would get the same masks in another order (counter c -> c ^ d)
    bits = hash32(keys[:, None, None, None] ^ hash32(counters)[None])
    return (bits >= int(p * 2**32)).to(dtype) * (1.0 / (1.0 - p))  # a Python scalar operand: fine inside capture
