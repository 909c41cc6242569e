"""The embedded engine's prenet dropout masks: a counter-based hash of (item seed, step, unit), made on the device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engines.embedded.dropout import MASK_32, hash32, item_keys, prenet_masks, unit_offsets
from app.engines.embedded.tacotron import MAX_DECODER_STEPS


def lowbias32_reference(x: int) -> int:
    """The same permutation with wrapping 32-bit arithmetic (numpy uint32), as it is written in C."""
    with np.errstate(over="ignore"):
        h = np.uint32(x)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x21F0AAAD)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x735A2D97)
        h ^= h >> np.uint32(15)
    return int(h)


def test_hash32_in_int64_equals_the_32_bit_reference_without_overflow():
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, MASK_32] + np.random.default_rng(0).integers(0, 2**32, 500).tolist()
    got = hash32(torch.tensor(values, dtype=torch.long)).tolist()
    assert got == [lowbias32_reference(v) for v in values]
    assert all(0 <= g <= MASK_32 for g in got)  # no product reached 2^63: nothing wrapped negative


def test_masks_are_a_function_of_seed_step_and_unit_only():
    keys = item_keys([5, 6, 2**40 + 5, -1], "cpu")  # any Python int: its low 32 bits count
    masks = prenet_masks(keys, 0, unit_offsets(48, 128, "cpu"), 0.5, torch.float32)
    assert set(masks.unique().tolist()) == {0.0, 2.0} and masks.shape == (4, 48, 2, 128)
    later = prenet_masks(keys, 16, unit_offsets(16, 128, "cpu"), 0.5, torch.float32)  # another block size and start
    assert torch.equal(later, masks[:, 16:32])
    assert torch.equal(prenet_masks(keys[[2, 0]], 0, unit_offsets(48, 128, "cpu"), 0.5, torch.float32), masks[[2, 0]])
    assert torch.equal(masks[0], masks[2])  # 5 and 2^40 + 5 share their low 32 bits
    assert not torch.equal(masks[0], masks[1])


def test_masks_keep_half_the_units_independently_across_items_and_steps():
    masks = prenet_masks(item_keys(range(64), "cpu"), 0, unit_offsets(200, 128, "cpu"), 0.5, torch.float32) / 2
    assert abs(float(masks.mean()) - 0.5) < 0.005
    per_item = masks.flatten(1)
    corr = torch.corrcoef(per_item)
    corr.fill_diagonal_(0)
    assert float(corr.abs().max()) < 0.03  # 51,200 units each: chance correlation is ~0.005
    steps = masks[0].flatten(1)  # step to step
    assert float(torch.corrcoef(steps).fill_diagonal_(0).abs().max()) < 0.4  # 256 units per step
    last = prenet_masks(item_keys([1], "cpu"), MAX_DECODER_STEPS - 16, unit_offsets(16, 256, "cpu"), 0.5, torch.float32)
    assert abs(float(last.mean()) / 2 - 0.5) < 0.05  # the counters stay in range to the last step


@pytest.mark.requires_cuda
def test_cuda_masks_equal_cpu_masks():
    keys = [0, 3, 2**31 - 1]
    cpu = prenet_masks(item_keys(keys, "cpu"), 32, unit_offsets(16, 128, "cpu"), 0.5, torch.float16)
    cuda = prenet_masks(item_keys(keys, "cuda"), torch.tensor([32], device="cuda"), unit_offsets(16, 128, "cuda"), 0.5, torch.float16)
    assert torch.equal(cpu, cuda.cpu())
