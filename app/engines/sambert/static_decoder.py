"""Static-shape PNCA decoding: fixed buckets, key/value caches in preallocated buffers, one CUDA graph per bucket.

Sambert has no stop gate: each item's number of decoder steps comes from its predicted durations, so a batch runs a
known number of steps. The batch is padded to a batch bucket and the decoder memory to a step bucket. Attention runs
over the whole bucket with masks that select exactly the windows the dynamic loop slices (own steps
[t - band_i, t], memory steps [t, t + band_i] below steps_i), and the step index lives on the device, so one
captured chunk of CHUNK_STEPS steps serves every position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from app import spans
from app.engines import cuda_graphs
from app.engines.sambert.decoder import MelDecoder, layer_out, layer_qkv
from app.engines.sambert.layers import masked_attention

CHUNK_STEPS = 16  # decoder steps per captured chunk (each step is r frames)
STEP_BUCKETS = (64, 128, 256, 512)  # decoder steps (r frames each) are padded up to these; longer batches run dynamic


@dataclass(frozen=True)
class _Buffers:
    """One bucket's views into the arena."""

    memory: torch.Tensor  # (B, S, d_mem) decoder memory, zero past each item's steps
    band: torch.Tensor  # (B, 1, 1, 1) long attention band per item
    steps: torch.Tensor  # (B, 1, 1, 1) long valid steps per item (padding rows: 0)
    positions: torch.Tensor  # (S,) long 0 .. S-1
    x_keys: tuple[torch.Tensor, ...]  # per layer (B, H, S, D): this decoding's own keys, written step by step
    x_values: tuple[torch.Tensor, ...]
    h_keys: tuple[torch.Tensor, ...]  # per layer (B, H, S, D): the memory's keys, loaded once per batch
    h_values: tuple[torch.Tensor, ...]
    previous: torch.Tensor  # (B, 1, mels) last frame of the previous step
    t: torch.Tensor  # (1,) long: the next step's index
    out: torch.Tensor  # (B, K, r * mels) the chunk's frames


class StaticPncaDecoder:
    """Decodes batches up to max_batch items with fixed shapes; `decode` returns None for a batch it has no bucket for."""

    def __init__(self, decoder: MelDecoder, device: str, dtype: torch.dtype, max_batch: int,
                 chunk_steps: int = CHUNK_STEPS) -> None:
        self.decoder = decoder
        self.dtype = dtype
        self.chunk_steps = chunk_steps
        largest = cuda_graphs.bucket_for(max_batch, cuda_graphs.BATCH_BUCKETS) or cuda_graphs.BATCH_BUCKETS[-1]
        self.batch_buckets = tuple(b for b in cuda_graphs.BATCH_BUCKETS if b <= largest)
        self.graphs = cuda_graphs.GraphSet(device)
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        with torch.no_grad():
            for batch in reversed(self.batch_buckets):  # largest first: the arena is sized by the first take
                for steps in reversed(STEP_BUCKETS):
                    bufs = self._take(batch, steps)
                    self._buffers[(batch, steps)] = bufs
                    self.graphs.add((batch, steps), self._chunk_step(bufs), lambda bufs=bufs: self._reset(bufs))

    def _take(self, batch: int, steps: int) -> _Buffers:
        d, a, dt = self.decoder, self.graphs.arena, self.dtype
        n_layers = len(d.layers)
        head = (batch, d.layers[0].n_head, steps, d.layers[0].d_head)
        memory_dim = d.mel_dec.dec_in_proj.in_features - d.d_model
        cache = lambda name: tuple(a.take(f"{name}{i}", head, dt) for i in range(n_layers))  # noqa: E731
        bufs = _Buffers(
            memory=a.take("memory", (batch, steps, memory_dim), dt), band=a.take("band", (batch, 1, 1, 1), torch.long),
            steps=a.take("steps", (batch, 1, 1, 1), torch.long), positions=a.take("positions", (steps,), torch.long),
            x_keys=cache("x_keys"), x_values=cache("x_values"), h_keys=cache("h_keys"), h_values=cache("h_values"),
            previous=a.take("previous", (batch, 1, d.num_mels), dt), t=a.take("t", (1,), torch.long),
            out=a.take("out", (batch, self.chunk_steps, d.r * d.num_mels), dt),
        )
        bufs.positions.copy_(torch.arange(steps))
        return bufs

    def _chunk_step(self, b: _Buffers):
        """The captured work: chunk_steps decoder steps on b's buffers, in place; no host sync, no branch on values."""
        d, k_steps = self.decoder, self.chunk_steps
        pos = b.positions[None, None, None, :]

        def step() -> None:
            previous = b.previous
            for k in range(k_steps):
                t = b.t
                x = d.step_input(previous, b.memory.index_select(1, t))
                x_blocked = (pos > t) | (pos < t - b.band)
                h_blocked = (pos < t) | (pos > t + b.band) | (pos >= b.steps)
                h_blocked = h_blocked & ~h_blocked.all(dim=-1, keepdim=True)  # items past their end: no NaN
                for attn, block, xk, xv, hk, hv in zip(d.layers, d.mel_dec.pnca, b.x_keys, b.x_values, b.h_keys, b.h_values):
                    q, key, value = layer_qkv(attn, x)
                    xk.index_copy_(2, t, key)
                    xv.index_copy_(2, t, value)
                    x = layer_out(attn, block, x, masked_attention(q, xk, xv, x_blocked), masked_attention(q, hk, hv, h_blocked))
                frame_group = d.step_output(x)
                b.out[:, k : k + 1].copy_(frame_group)
                previous = frame_group[:, :, -d.num_mels :]
                b.t.add_(1)
            b.previous.copy_(previous)

        return step

    @torch.no_grad()
    def decode(self, memory: torch.Tensor, steps: torch.Tensor, band: torch.Tensor) -> torch.Tensor | None:
        """Like MelDecoder.forward: memory (n, S, d_mem) -> (n, S, r * mels); None if no bucket fits this batch."""
        n, n_steps = memory.shape[:2]
        key = cuda_graphs.pick_bucket(n, n_steps, self.batch_buckets, STEP_BUCKETS)
        if key is None or memory.dtype != self.dtype:
            return None
        b, batch = self._buffers[key], key[0]
        self._load(b, memory, steps, band)
        k = self.chunk_steps
        chunks = math.ceil(n_steps / k)
        out = torch.empty(batch, chunks * k, b.out.shape[-1], device=memory.device, dtype=self.dtype)
        for c in range(chunks):
            self.graphs.run(key)
            out[:, c * k : (c + 1) * k].copy_(b.out)
        spans.annotate(steps=chunks * k)  # chunks replayed, padding steps included
        return out[:n, :n_steps]

    def _load(self, b: _Buffers, memory: torch.Tensor, steps: torch.Tensor, band: torch.Tensor) -> None:
        """Copy one batch in and reset the state; padding rows have no steps and padding steps are masked."""
        n, n_steps = memory.shape[:2]
        b.memory.zero_()
        b.memory[:n, :n_steps].copy_(memory)
        for buf, src in ((b.band, band), (b.steps, steps)):
            buf.zero_()
            buf[:n, 0, 0, 0].copy_(src)
        keys, values = self.decoder.memory_keys(b.memory)
        for buf, src in zip(b.h_keys + b.h_values, keys + values):
            buf.copy_(src)
        self._reset(b)

    @staticmethod
    def _reset(b: _Buffers) -> None:
        """Back to step 0: the step index, this decoding's own keys and values, the previous frame, the output.

        Every bucket's views share the arena's buffers, so a bucket's warm-ups at capture start from whatever the
        previous bucket left: without this the step index ran past the smaller buckets' memory (index_select out of
        range, a device-side assert on CUDA)."""
        for buf in (*b.x_keys, *b.x_values, b.previous, b.t, b.out):
            buf.zero_()  # stale keys would be masked, but 0 * a non-finite stale value is still NaN

    @property
    def memory_mib(self) -> float:
        return self.graphs.memory_mib

    def describe(self) -> str:
        return f"{self.graphs.describe()} (batch {self.batch_buckets[0]}-{self.batch_buckets[-1]} x {len(STEP_BUCKETS)} step buckets)"
