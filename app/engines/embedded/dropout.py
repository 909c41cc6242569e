"""Prenet dropout masks made on the device from a counter-based hash of (item seed, step, unit).

ttskit keeps prenet dropout on at inference, so every decoder step needs a fresh 0 / 1/(1-p) mask per item. Drawing
them from a torch.Generator per item on the CPU and copying them over cost a quarter of the batch-32 budget on a GPU
(gpu-review point 2). Here a mask element is a pure function of (item key, step, unit): made where it is used, in a
few elementwise kernels per block of steps, with no generator state and no host copy, so it can run inside a captured
CUDA graph, and the dynamic loop and the static chunk call the same function and get the same masks.

The hash is MurmurHash3's 32-bit finalizer (fmix32, a bijection with full avalanche), applied to the counter and
again after the item's key is mixed in, in int64 arithmetic: every value
stays in [0, 2^32) and every product below 2^49 (a 32-bit multiply is done in 16-bit halves), so nothing overflows
and CPU and CUDA give identical bits.
"""
from __future__ import annotations

from typing import Sequence

import torch

MASK_32 = 0xFFFFFFFF
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35  # fmix32's multipliers
_SEED_SALT = 0x9E3779B9  # keeps seed 0 away from the hash's fixed point at 0


def _mul32(x: torch.Tensor, a: int) -> torch.Tensor:
    """(x * a) mod 2^32 for int64 x in [0, 2^32): the constant in 16-bit halves, so no product reaches 2^49."""
    return (x * (a & 0xFFFF) + (((x * (a >> 16)) & 0xFFFF) << 16)) & MASK_32


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's finalizer on int64 values in [0, 2^32): a bijection of that range (logical shifts: x >= 0)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 13)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def item_keys(seeds: Sequence[int], device) -> torch.Tensor:
    """(B,) int64 per-item keys from Utterance seeds (any Python int: its low 32 bits count)."""
    raw = torch.tensor([(int(s) ^ _SEED_SALT) & MASK_32 for s in seeds], dtype=torch.long)
    return fmix32(raw).to(device)


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
    bits = fmix32(keys[:, None, None, None] ^ fmix32(counters)[None])
    keep = bits >= int(p * 2**32)
    return keep.to(dtype) * (1.0 / (1.0 - p))
