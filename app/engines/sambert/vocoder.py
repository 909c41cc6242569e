"""Causal HiFi-GAN generator (mel -> 16 kHz waveform) with weight norm folded away at load time."""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from app.engines.checkpoints import fold_weight_norm
from app.engines.sambert.config import VocoderConfig


class CausalConv(nn.Conv1d):
    """Conv1d that pads only on the left, so each output sample depends on the past alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class CausalTransposedConv(nn.ConvTranspose1d):
    """Transposed conv trimmed to T * stride samples; sample n depends on frames <= n / stride only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, :, : x.size(-1) * self.stride[0]]


class ResidualBlock(nn.Module):
    """Dilated causal residual stack (KAN-TTS `ResidualBlock`, old `ResBlock1`)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(CausalConv(channels, channels, kernel_size, dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(CausalConv(channels, channels, kernel_size) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = c2(F.leaky_relu(c1(F.leaky_relu(x, self.slope)), self.slope)) + x
        return x


class HifiGanGenerator(nn.Module):
    """KAN-TTS causal HiFi-GAN: each stage adds a transposed-conv and a repeat-then-conv upsampling."""

    def __init__(self, c: VocoderConfig):
        super().__init__()
        self.config = c
        self.conv_pre = CausalConv(c.in_channels, c.channels, c.kernel_size)
        self.ups = nn.ModuleList()
        self.repeats = nn.ModuleList()
        self.blocks = nn.ModuleList()
        channels = c.channels
        for scale, kernel in zip(c.upsample_scales, c.upsample_kernel_sizes):
            self.ups.append(CausalTransposedConv(channels, channels // 2, kernel, scale))
            self.repeats.append(CausalConv(channels, channels // 2, c.kernel_size))
            channels //= 2
            for k, dilations in zip(c.resblock_kernel_sizes, c.resblock_dilations):
                self.blocks.append(ResidualBlock(channels, k, dilations, c.negative_slope))
        self.conv_post = CausalConv(channels, 1, c.kernel_size)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, num_mels, T) -> waveform (B, T * hop) in [-1, 1]."""
        c, n_kernels = self.config, len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for i, scale in enumerate(c.upsample_scales):
            x = torch.sin(x) + x
            activated = F.leaky_relu(x, c.negative_slope)
            repeated = self.repeats[i](F.interpolate(activated, scale_factor=scale, mode="nearest"))
            x = repeated + self.ups[i](activated)
            blocks = self.blocks[i * n_kernels : (i + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # default slope 0.01, as in the original


_NEW_LAYOUT = [  # KAN-TTS `Generator` names -> ours
    (r"^conv_pre\.conv1d\.", "conv_pre."),
    (r"^conv_post\.conv1d\.", "conv_post."),
    (r"^transpose_upsamples\.(\d+)\.1\.deconv\.", r"ups.\1."),
    (r"^repeat_upsamples\.(\d+)\.2\.conv1d\.", r"repeats.\1."),
    (r"^conv_blocks\.(\d+)\.(convs[12])\.(\d+)\.conv1d\.", r"blocks.\1.\2.\3."),
]
_OLD_LAYOUT = [  # ModelScope's older `Generator(h)` names -> ours
    (r"^conv_pre\.conv1d\.", "conv_pre."),
    (r"^conv_post\.conv1d\.", "conv_post."),
    (r"^ups\.(\d+)\.deconv\.", r"ups.\1."),
    (r"^repeat_ups\.(\d+)\.2\.conv1d\.", r"repeats.\1."),
    (r"^resblocks\.(\d+)\.(convs[12])\.(\d+)\.conv1d\.", r"blocks.\1.\2.\3."),
]


def convert_generator_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a KAN-TTS (new or old layout) generator state dict to `HifiGanGenerator` names, weight norm folded."""
    folded = fold_weight_norm(state)
    rules = _OLD_LAYOUT if any(k.startswith("resblocks.") for k in folded) else _NEW_LAYOUT
    out = {}
    for key, value in folded.items():
        for pattern, repl in rules:
            new_key, hits = re.subn(pattern, repl, key)
            if hits:
                out[new_key] = value
                break
        else:
            raise KeyError(f"unexpected vocoder weight {key!r}")
    return out
