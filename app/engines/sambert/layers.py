"""Sambert building blocks, named like KAN-TTS's modules so its checkpoints load as they are.

Every block takes a padding mask (True = padded) and guarantees that padded positions cannot change the
valid ones, so a padded batch computes exactly what each item computes alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6  # KAN-TTS LayerNorm epsilon


def prenet(in_units: int, units: tuple[int, ...], out_units: int = 0) -> nn.ModuleList:
    """Linear+ReLU stack laid out like KAN-TTS `Prenet.fcs` (dropout slots kept so indices match)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip((in_units,) + tuple(units[:-1]), units):
        layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Identity()]  # Identity: dropout is off at inference
    if out_units:
        layers.append(nn.Linear(units[-1], out_units))
    return nn.ModuleList(layers)


def run_prenet(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Apply a `prenet()` stack."""
    for layer in layers:
        x = layer(x)
    return x


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention over the last two dims; `blocked` (broadcastable bool) removes keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class MultiHeadSelfAttention(nn.Module):
    """Pre-norm self-attention (KAN-TTS `MultiHeadSelfAttention`); residual only when widths match."""

    def __init__(self, n_head: int, d_in: int, d_model: int, d_head: int):
        super().__init__()
        self.n_head, self.d_head = n_head, d_head
        self.layer_norm = nn.LayerNorm(d_in, eps=LAYER_NORM_EPS)
        self.w_qkv = nn.Linear(d_in, 3 * n_head * d_head)
        self.fc = nn.Linear(n_head * d_head, d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.w_qkv(self.layer_norm(x)).chunk(3, dim=-1)
        heads = [t.view(batch, length, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v)]
        out = masked_attention(*heads, pad_mask[:, None, None, :])
        out = self.fc(out.transpose(1, 2).reshape(batch, length, -1))
        return out + x if out.size(-1) == x.size(-1) else out


class ConvFeedForward(nn.Module):
    """Pre-norm conv feed-forward (KAN-TTS `PositionwiseConvFeedForward`)."""

    def __init__(self, d_in: int, d_hid: int, kernel_sizes: tuple[int, int]):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, kernel_sizes[0], padding=(kernel_sizes[0] - 1) // 2)
        self.w_2 = nn.Conv1d(d_hid, d_in, kernel_sizes[1], padding=(kernel_sizes[1] - 1) // 2)
        self.layer_norm = nn.LayerNorm(d_in, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        normed = self.layer_norm(x)
        if pad_mask is not None:
            # The original leaves LayerNorm's bias on padded frames, which the k=3 convolution then reads into
            # the last valid frame; zeroing them makes padding look exactly like the convolution's own zeros.
            normed = normed.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        hidden = F.relu(self.w_1(normed.transpose(1, 2)))
        if pad_mask is not None:
            hidden = hidden.masked_fill(pad_mask.unsqueeze(1), 0.0)
        return self.w_2(hidden).transpose(1, 2) + x


class FFTBlock(nn.Module):
    """Self-attention + conv feed-forward, padded positions zeroed after each (KAN-TTS `FFTBlock`)."""

    def __init__(self, d_in: int, d_model: int, n_head: int, d_inner: int):
        super().__init__()
        self.slf_attn = MultiHeadSelfAttention(n_head, d_in, d_model, d_model // n_head)
        self.pos_ffn = ConvFeedForward(d_model, d_inner, (3, 1))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        keep = pad_mask.unsqueeze(-1)
        x = self.slf_attn(x, pad_mask).masked_fill(keep, 0.0)
        return self.pos_ffn(x, pad_mask).masked_fill(keep, 0.0)


class FeedForwardNet(nn.Module):
    """Pointwise two-layer network of an FSMN layer (KAN-TTS `fsmn.FeedForwardNet`, kernels 1 and 1)."""

    def __init__(self, d_in: int, d_hid: int, d_out: int):
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, 1)
        self.w_2 = nn.Conv1d(d_hid, d_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.relu(self.w_1(x.transpose(1, 2)))).transpose(1, 2)


class MemoryBlock(nn.Module):
    """Depthwise FIR memory over time with an optional look-back shift (KAN-TTS `MemoryBlockV2`)."""

    def __init__(self, d: int, filter_size: int, shift: int):
        super().__init__()
        self.left_pad = int(round((filter_size - 1) / 2)) + max(shift, 0)
        self.right_pad = int((filter_size - 1) / 2) - max(shift, 0)
        self.conv_dw = nn.Conv1d(d, d, filter_size, groups=d, bias=False)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        keep = pad_mask.unsqueeze(-1)
        x = x.masked_fill(keep, 0.0)
        padded = F.pad(x.transpose(1, 2), (self.left_pad, self.right_pad))
        return (self.conv_dw(padded).transpose(1, 2) + x).masked_fill(keep, 0.0)


class FsmnEncoder(nn.Module):
    """Stack of FSMN layers (KAN-TTS `FsmnEncoderV2`)."""

    def __init__(self, filter_size: int, num_layers: int, d_in: int, d_memory: int, d_inner: int, shift: int):
        super().__init__()
        dims = [d_in] + [d_memory] * (num_layers - 1)
        self.ffn_lst = nn.ModuleList(FeedForwardNet(d, d_inner, d_memory) for d in dims)
        self.memory_block_lst = nn.ModuleList(MemoryBlock(d_memory, filter_size, shift) for _ in dims)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        for ffn, memory_block in zip(self.ffn_lst, self.memory_block_lst):
            memory = memory_block(ffn(x), pad_mask)
            x = memory + x if memory.size(-1) == x.size(-1) else memory
        return x


def sinusoid_table(n_positions: int, depth: int) -> torch.Tensor:
    """Text position table: 1-based positions, sines in the first half of the channels, cosines in the second."""
    half = depth // 2
    positions = torch.arange(1, n_positions + 1, dtype=torch.float64)[:, None]
    rates = torch.pow(10000.0, torch.arange(half, dtype=torch.float64) / (depth / 2 - 1))
    angles = positions / rates[None, :]
    table = torch.zeros(n_positions, depth, dtype=torch.float64)
    table[:, :half] = torch.sin(angles)
    table[:, half:] = torch.cos(angles)
    return table.float()


class TextPositionEncoder(nn.Module):
    """Adds the sinusoid table; the table is a state-dict entry (`position_enc`) as in KAN-TTS."""

    def __init__(self, max_len: int, depth: int):
        super().__init__()
        self.depth = depth
        self.register_buffer("position_enc", sinusoid_table(max_len, depth).unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.size(1)
        table = self.position_enc
        if length > table.size(1):  # longer than the stored table: extend it (KAN-TTS does the same)
            table = sinusoid_table(length, self.depth).unsqueeze(0).to(x)
        return x + table[:, :length].to(x.dtype)


class DurationPositionEncoder(nn.Module):
    """Sinusoid of each frame's 1-based position inside its symbol (KAN-TTS `DurSinusoidalPositionEncoder`)."""

    def __init__(self, depth: int):
        super().__init__()
        timescales = [10000.0 ** (2 * (i // 2) / depth) for i in range(depth)]
        self.register_buffer("inv_timescales", torch.tensor(timescales, dtype=torch.float32))

    def forward(self, frame_positions: torch.Tensor) -> torch.Tensor:
        """frame_positions: (B, T) float, 0 on padded frames (which then encode as sin 0 / cos 0, as in the original)."""
        angles = frame_positions[:, :, None] / self.inv_timescales[None, None, :]
        out = torch.empty_like(angles)
        out[:, :, 0::2] = torch.sin(angles[:, :, 0::2])
        out[:, :, 1::2] = torch.cos(angles[:, :, 1::2])
        return out
