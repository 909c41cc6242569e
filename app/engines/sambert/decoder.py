"""PNCA mel decoder: autoregressive over groups of r frames, banded attention, per-item bands and lengths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from app import spans
from app.engines.sambert.config import AcousticConfig
from app.engines.sambert.layers import ConvFeedForward, masked_attention, prenet, run_prenet


class PncaAttention(nn.Module):
    """Attention over past decoder steps (x) and over a window of the memory (h) (KAN-TTS `MultiHeadPNCAAttention`)."""

    def __init__(self, n_head: int, d_model: int, d_mem: int):
        super().__init__()
        d_head = d_model // n_head
        self.n_head, self.d_head = n_head, d_head
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w_x_qkv = nn.Linear(d_model, 3 * n_head * d_head)
        self.fc_x = nn.Linear(n_head * d_head, d_model)
        self.w_h_kv = nn.Linear(d_mem, 2 * n_head * d_head)
        self.fc_h = nn.Linear(n_head * d_head, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H*D) -> (B, H, T, D)."""
        return x.view(x.size(0), x.size(1), self.n_head, self.d_head).transpose(1, 2)


class PncaBlock(nn.Module):
    """PNCA attention + pointwise feed-forward (KAN-TTS `PNCABlock`)."""

    def __init__(self, c: AcousticConfig):
        super().__init__()
        self.pnca_attn = PncaAttention(c.decoder_num_heads, c.decoder_num_units, c.memory_dim)
        self.pos_ffn = ConvFeedForward(c.decoder_num_units, c.decoder_ffn_inner_dim, (1, 1))


class MelDecoder(nn.Module):
    """Holds `mel_dec` like KAN-TTS `MelPNCADecoder`; `forward` runs inference with a key/value cache."""

    def __init__(self, c: AcousticConfig):
        super().__init__()
        self.r, self.num_mels, self.d_model = c.outputs_per_step, c.num_mels, c.decoder_num_units
        self.mel_dec = nn.Module()
        self.mel_dec.prenet = nn.Module()
        self.mel_dec.prenet.fcs = prenet(c.num_mels, c.decoder_prenet_units, c.decoder_num_units)
        self.mel_dec.dec_in_proj = nn.Linear(c.decoder_num_units + c.memory_dim, c.decoder_num_units)
        self.mel_dec.pnca = nn.ModuleList(PncaBlock(c) for _ in range(c.decoder_num_layers))
        self.mel_dec.ln = nn.LayerNorm(c.decoder_num_units, eps=1e-6)
        self.mel_dec.dec_out_proj = nn.Linear(c.decoder_num_units, c.num_mels * c.outputs_per_step)

    def forward(self, memory: torch.Tensor, steps: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """memory (B, S, d_mem); steps (B,) valid steps per item; band (B,) attention band per item.

        Step t of item i attends its own steps [t - band_i, t] and memory steps [t, t + band_i] below steps_i,
        exactly the windows a batch of one uses; returns (B, S, r * num_mels).
        """
        dec = self.mel_dec
        batch, n_steps, _ = memory.shape
        spans.annotate(steps=n_steps)
        device = memory.device
        max_band = int(band.max())
        h_keys, h_values = self.memory_keys(memory)
        n_head, d_head = self.layers[0].n_head, self.layers[0].d_head
        x_keys = [memory.new_zeros(batch, n_head, n_steps, d_head) for _ in self.layers]
        x_values = [memory.new_zeros(batch, n_head, n_steps, d_head) for _ in self.layers]
        band_col = band.to(device)[:, None, None, None]
        steps_col = steps.to(device)[:, None, None, None]
        offsets = torch.arange(max_band + 1, device=device)
        previous = memory.new_zeros(batch, 1, self.num_mels)
        outputs = []
        for t in range(n_steps):
            x = self.step_input(previous, memory[:, t : t + 1])
            lo, hi = max(0, t - max_band), min(n_steps, t + max_band + 1)
            # x window: key t - max_band + j is blocked when older than this item's band.
            x_pos = torch.arange(lo, t + 1, device=device)
            x_blocked = x_pos[None, None, None, :] < (t - band_col)
            h_pos = offsets[: hi - t] + t
            h_blocked = (h_pos[None, None, None, :] > t + band_col) | (h_pos[None, None, None, :] >= steps_col)
            h_blocked = h_blocked & ~h_blocked.all(dim=-1, keepdim=True)  # items past their end: no NaN
            for attn, block, xk, xv, hk, hv in zip(self.layers, dec.pnca, x_keys, x_values, h_keys, h_values):
                q, k, v = layer_qkv(attn, x)
                xk[:, :, t : t + 1] = k
                xv[:, :, t : t + 1] = v
                out_x = masked_attention(q, xk[:, :, lo : t + 1], xv[:, :, lo : t + 1], x_blocked)
                out_h = masked_attention(q, hk[:, :, t:hi], hv[:, :, t:hi], h_blocked)
                x = layer_out(attn, block, x, out_x, out_h)
            frame_group = self.step_output(x)
            outputs.append(frame_group)
            previous = frame_group[:, :, -self.num_mels :]
        return torch.cat(outputs, dim=1)

    # --- one step's pieces, shared with the static (graph-captured) decoder -------------------------
    @property
    def layers(self) -> list[PncaAttention]:
        return [block.pnca_attn for block in self.mel_dec.pnca]

    def memory_keys(self, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the memory's keys and values (B, H, S, D): fixed for the whole decoding, computed once."""
        keys, values = [], []
        for attn in self.layers:
            k, v = attn.w_h_kv(memory).chunk(2, dim=-1)
            keys.append(attn.split_heads(k))
            values.append(attn.split_heads(v))
        return keys, values

    def step_input(self, previous: torch.Tensor, memory_t: torch.Tensor) -> torch.Tensor:
        """Previous frame (B, 1, mels) and this step's memory (B, 1, d_mem) -> the first layer's input (B, 1, d_model)."""
        x = run_prenet(self.mel_dec.prenet.fcs, previous)
        return self.mel_dec.dec_in_proj(torch.cat([memory_t, x], dim=-1)) * self.d_model**0.5

    def step_output(self, x: torch.Tensor) -> torch.Tensor:
        """Last layer's output (B, 1, d_model) -> this step's r frames (B, 1, r * mels)."""
        return self.mel_dec.dec_out_proj(self.mel_dec.ln(x))


def layer_qkv(attn: PncaAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This step's query, key and value (B, H, 1, D) of one PNCA layer."""
    q, k, v = attn.w_x_qkv(attn.layer_norm(x)).chunk(3, dim=-1)
    return attn.split_heads(q), attn.split_heads(k), attn.split_heads(v)


def layer_out(attn: PncaAttention, block: PncaBlock, x: torch.Tensor, out_x: torch.Tensor, out_h: torch.Tensor) -> torch.Tensor:
    """Combine one layer's two attentions with its residual and feed-forward."""
    x = attn.fc_x(merge_heads(out_x)) + attn.fc_h(merge_heads(out_h)) + x
    return pointwise_ffn(block.pos_ffn, x)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    return x.transpose(1, 2).reshape(x.size(0), x.size(2), -1)


def pointwise_ffn(ffn: ConvFeedForward, x: torch.Tensor) -> torch.Tensor:
    """ConvFeedForward with kernel sizes (1, 1), as linear layers on a (B, T, C) tensor."""
    hidden = F.relu(F.linear(ffn.layer_norm(x), ffn.w_1.weight[:, :, 0], ffn.w_1.bias))
    return F.linear(hidden, ffn.w_2.weight[:, :, 0], ffn.w_2.bias) + x
