"""Static-shape Tacotron2 decoding: fixed buckets, state in preallocated buffers, one CUDA graph per bucket.

The batch is padded to a batch bucket and the encoder memory to a length bucket (padding masked). Decoding runs in
chunks of CHUNK_STEPS steps; each chunk is one captured graph on CUDA (the same code runs eagerly elsewhere).
Finished items stay in the batch: their stop gate, frame count and done flag are kept on the device and frozen once
set, and the host reads a single all-done flag once per chunk instead of every step. The prenet dropout masks are
made inside the chunk from each item's key (app/engines/embedded/dropout.py), by the same function the dynamic loop
calls. An item's output therefore depends only on its own inputs, dropout key, gate and limit, exactly as there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from app import spans
from app.engines import cuda_graphs
from app.engines.embedded.dropout import prenet_masks, unit_offsets
from app.engines.embedded.tacotron import GATE_THRESHOLD, N_MELS, PRENET_DROPOUT, Tacotron

CHUNK_STEPS = 16  # decoder steps per captured chunk: the host reads the stop flags once per chunk (one sync)
MEMORY_BUCKETS = (64, 128, 256, 512)  # encoder lengths (symbols) are padded up to these; longer batches run dynamic


@dataclass(frozen=True)
class _Buffers:
    """One bucket's views into the arena: inputs, decoder state, stop bookkeeping and the chunk's output."""

    memory: torch.Tensor  # (B, T, memory_dim) encoder output, zero past each item's end
    processed: torch.Tensor  # (B, T, attention_dim) memory_layer(memory)
    pad_mask: torch.Tensor  # (B, T) bool, True past each item's end (padding rows: all but position 0)
    limits: torch.Tensor  # (B,) long: most frames per item (padding rows: 1)
    keys: torch.Tensor  # (B,) int64 each item's dropout key (padding rows: 0)
    offsets: torch.Tensor  # (K, 2, prenet_dim) int64 mask counters of a chunk's steps (dropout.unit_offsets)
    state: tuple[torch.Tensor, ...]  # ah, ac, dh, dc (B, rnn), aw, awc (B, T), ctx (B, memory_dim)
    frame: torch.Tensor  # (B, 80) previous frame
    pos: torch.Tensor  # (1,) long: the step the chunk starts at
    done: torch.Tensor  # (B,) bool: gate fired or limit reached (padding rows start done)
    stopped: torch.Tensor  # (B,) bool: the gate fired
    length: torch.Tensor  # (B,) long: frame count once done
    all_done: torch.Tensor  # (1,) bool: the one value the host reads per chunk
    mel: torch.Tensor  # (B, K, 80) the chunk's frames


class StaticTacotronDecoder:
    """Decodes batches up to max_batch items with fixed shapes; `decode` returns None for a batch it has no bucket for."""

    def __init__(self, model: Tacotron, device: str, max_batch: int, chunk_steps: int = CHUNK_STEPS,
                 compile_step: bool = False) -> None:
        self.model = model
        self.chunk_steps = chunk_steps
        self.dtype = model.embedding.weight.dtype
        largest = cuda_graphs.bucket_for(max_batch, cuda_graphs.BATCH_BUCKETS) or cuda_graphs.BATCH_BUCKETS[-1]
        self.batch_buckets = tuple(b for b in cuda_graphs.BATCH_BUCKETS if b <= largest)
        self.graphs = cuda_graphs.GraphSet(device)
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        with torch.no_grad():  # not inference_mode: the buffers are written in place outside it too
            for batch in reversed(self.batch_buckets):  # largest first: the arena is sized by the first take
                for length in reversed(MEMORY_BUCKETS):
                    bufs = self._take(batch, length)
                    step = self._chunk_step(bufs)
                    if compile_step:  # CPU experiment (issue 11, item 6): kept only where it measures faster
                        step = torch.compile(step, dynamic=False)
                    self._buffers[(batch, length)] = bufs
                    self.graphs.add((batch, length), step, lambda bufs=bufs: self._reset(bufs, len(bufs.done)))

    def _take(self, batch: int, length: int) -> _Buffers:
        m, c, a, dt = self.model, self.model.cfg, self.graphs.arena, self.dtype
        take = lambda name, shape, dtype=dt: a.take(name, shape, dtype)  # noqa: E731
        rnn = (c.attention_rnn_dim, c.attention_rnn_dim, c.decoder_rnn_dim, c.decoder_rnn_dim, length, length, m.memory_dim)
        return _Buffers(
            memory=take("memory", (batch, length, m.memory_dim)), processed=take("processed", (batch, length, c.attention_dim)),
            pad_mask=take("pad_mask", (batch, length), torch.bool), limits=take("limits", (batch,), torch.long),
            keys=take("keys", (batch,), torch.long), offsets=take("offsets", (self.chunk_steps, 2, c.prenet_dim), torch.long),
            state=tuple(take(f"state{i}", (batch, w)) for i, w in enumerate(rnn)),
            frame=take("frame", (batch, N_MELS)), pos=take("pos", (1,), torch.long),
            done=take("done", (batch,), torch.bool), stopped=take("stopped", (batch,), torch.bool),
            length=take("length", (batch,), torch.long), all_done=take("all_done", (1,), torch.bool),
            mel=take("mel", (batch, self.chunk_steps, N_MELS)),
        )

    def _chunk_step(self, b: _Buffers):
        """The captured work: chunk_steps decoder steps on b's buffers, updated in place. No host sync, no Python
        branch on tensor values: stop bookkeeping is elementwise on the device."""
        model, k_steps = self.model, self.chunk_steps
        b.offsets.copy_(unit_offsets(k_steps, model.cfg.prenet_dim, b.offsets.device))  # outside capture: fixed

        def step() -> None:
            state, frame = b.state, b.frame
            drop = prenet_masks(b.keys, b.pos, b.offsets, PRENET_DROPOUT, self.dtype)  # this chunk's, on the device
            for k in range(k_steps):
                out, state = model.decoder_step(frame, drop[:, k], state, b.memory, b.processed, b.pad_mask)
                frame = out[:, :N_MELS]
                b.mel[:, k].copy_(frame)
                t = b.pos + k
                fired = (torch.sigmoid(out[:, N_MELS].float()) > GATE_THRESHOLD) & (t < b.limits) & ~b.done
                b.length.copy_(torch.where(fired, t.clamp(min=1), b.length))  # the firing frame is not kept
                b.stopped.logical_or_(fired)
                b.done.logical_or_(fired)
                at_limit = (t + 1 >= b.limits) & ~b.done
                b.length.copy_(torch.where(at_limit, b.limits, b.length))
                b.done.logical_or_(at_limit)
            for buf, new in zip(b.state, state):
                buf.copy_(new)
            b.frame.copy_(frame)
            b.pos.add_(k_steps)
            b.all_done.copy_(b.done.all())

        return step

    def decode(self, memory: torch.Tensor, processed: torch.Tensor, lengths: torch.Tensor, keys: torch.Tensor,
               limits: list[int]) -> tuple[torch.Tensor, list[int], list[bool]] | None:
        """Like Tacotron._decode_dynamic: decoder mel (n, 80, max_len), frame counts, gate flags; None if no bucket fits."""
        key = cuda_graphs.pick_bucket(len(memory), memory.shape[1], self.batch_buckets, MEMORY_BUCKETS)
        if key is None or memory.dtype != self.dtype:
            return None
        b, batch, n, device = self._buffers[key], key[0], len(memory), memory.device
        self._load(b, memory, processed, lengths, keys, limits)
        k = self.chunk_steps
        chunks = math.ceil(max(limits) / k)
        mel = torch.empty(batch, chunks * k, N_MELS, device=device, dtype=self.dtype)
        for c in range(chunks):
            self.graphs.run(key)
            mel[:, c * k : (c + 1) * k].copy_(b.mel)
            if bool(b.all_done):  # the one host read per chunk
                break
        spans.annotate(steps=(c + 1) * k)  # chunks replayed, padding steps included
        frame_lengths = b.length[:n].tolist()
        stopped = b.stopped[:n].tolist()
        return mel[:n, : max(frame_lengths)].transpose(1, 2), frame_lengths, stopped

    def _load(self, b: _Buffers, memory, processed, lengths, keys, limits: list[int]) -> None:
        """Copy one batch into the bucket's buffers and reset the state: padding rows and positions are masked."""
        n, length = memory.shape[:2]
        batch, span = b.memory.shape[:2]
        device = memory.device
        for buf, src in ((b.memory, memory), (b.processed, processed)):
            buf.zero_()
            buf[:n, :length].copy_(src)
        row_lengths = torch.ones(batch, dtype=torch.long, device=device)  # padding rows attend position 0 only
        row_lengths[:n] = lengths
        b.pad_mask.copy_(torch.arange(span, device=device)[None] >= row_lengths[:, None])
        b.limits.copy_(torch.tensor(limits + [1] * (batch - n)))
        b.keys.zero_()
        b.keys[:n].copy_(keys)
        self._reset(b, n)

    @staticmethod
    def _reset(b: _Buffers, n: int) -> None:
        """Back to step 0 with rows n and beyond done (padding): decoder state, previous frame, position, stop flags.

        Buckets share the arena's buffers, so at capture a bucket's warm-ups would otherwise start where the previous
        bucket's ended (harmless here only because `pos` is compared, never used as an index; Sambert's was)."""
        for t in (*b.state, b.frame, b.pos, b.stopped, b.length, b.all_done, b.mel):
            t.zero_()
        b.done.copy_(torch.arange(len(b.done), device=b.done.device) >= n)

    @property
    def memory_mib(self) -> float:
        return self.graphs.memory_mib

    def describe(self) -> str:
        return f"{self.graphs.describe()} (batch {self.batch_buckets[0]}-{self.batch_buckets[-1]} x {len(MEMORY_BUCKETS)} lengths)"
