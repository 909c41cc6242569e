"""MelGAN generator (log-mel -> waveform) for ttskit's vocoder weights, weight norm already folded."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

HOP_LENGTH = 256  # samples per mel frame
TAIL_FRAMES = 10  # silent frames appended before vocoding, trimmed after: removes the end-of-signal artifact
SILENT_LOG_MEL = -11.5129  # log(1e-5), the floor of the training mels
LEAKY_SLOPE = 0.2
CONTEXT_FRAMES = 10  # frames of context each side of a chunk; 8 already matches whole-signal output to 3e-6
CHUNK_FRAMES = 128  # vocoder window (+ context): small activations, and chunks of all items batch together
MAX_CHUNKS_PER_CALL = 32  # bounds the vocoder's activation memory per call


class ResStack(nn.Module):
    """Three dilated residual blocks (dilation 1, 3, 9) with 1x1 shortcuts."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(nn.Conv1d(channels, channels, 3, dilation=3**i) for i in range(3))
        self.pointwise = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(3))
        self.shortcuts = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (dil, pw, sc) in enumerate(zip(self.dilated, self.pointwise, self.shortcuts)):
            y = F.pad(F.leaky_relu(x, LEAKY_SLOPE), (3**i, 3**i), mode="reflect")
            x = sc(x) + pw(F.leaky_relu(dil(y), LEAKY_SLOPE))
        return x


class MelGAN(nn.Module):
    """Conv stack upsampling 8x8x2x2 = 256 samples per frame."""

    UPSAMPLE = ((512, 256, 16, 8, 4), (256, 128, 16, 8, 4), (128, 64, 4, 2, 1), (64, 32, 4, 2, 1))  # in, out, kernel, stride, pad

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.pre = nn.Conv1d(n_mels, 512, 7)
        self.ups = nn.ModuleList(nn.ConvTranspose1d(i, o, k, s, p) for i, o, k, s, p in self.UPSAMPLE)
        self.stacks = nn.ModuleList(ResStack(o) for _, o, *_ in self.UPSAMPLE)
        self.post = nn.Conv1d(32, 1, 7)

    def load_ttskit_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Map ttskit's nn.Sequential indices onto our names."""
        out = {"pre.weight": sd["generator.1.weight"], "pre.bias": sd["generator.1.bias"],
               "post.weight": sd["generator.16.weight"], "post.bias": sd["generator.16.bias"]}
        for n, (up, stack) in enumerate(((3, 4), (6, 7), (9, 10), (12, 13))):
            for k in ("weight", "bias"):
                out[f"ups.{n}.{k}"] = sd[f"generator.{up}.{k}"]
                for i in range(3):
                    out[f"stacks.{n}.dilated.{i}.{k}"] = sd[f"generator.{stack}.blocks.{i}.2.{k}"]
                    out[f"stacks.{n}.pointwise.{i}.{k}"] = sd[f"generator.{stack}.blocks.{i}.4.{k}"]
                    out[f"stacks.{n}.shortcuts.{i}.{k}"] = sd[f"generator.{stack}.shortcuts.{i}.{k}"]
        self.load_state_dict(out, strict=True)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) log-mel -> (B, T * 256) waveform in [-1, 1]."""
        x = self.pre(F.pad((mel + 5.0) / 5.0, (3, 3), mode="reflect"))
        for up, stack in zip(self.ups, self.stacks):
            x = stack(up(F.leaky_relu(x, LEAKY_SLOPE)))
        x = self.post(F.pad(F.leaky_relu(x, LEAKY_SLOPE), (3, 3), mode="reflect"))
        return torch.tanh(x).squeeze(1)

    @torch.no_grad()
    def vocode_many(self, mels: list[torch.Tensor], chunk_frames: int = CHUNK_FRAMES, max_rows: int = MAX_CHUNKS_PER_CALL,
                    run: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Each (80, T) mel -> (T * 256,) waveform, with the silent tail trick ttskit uses.

        Every mel is cut into windows of chunk_frames plus CONTEXT_FRAMES each side; windows of equal length, from
        any item, run as one batch and are trimmed back. Same samples as whole-signal vocoding within ~3e-6,
        while a batch of sentences shares one vocoder call and peak memory stays small.
        run: what computes a window batch instead of this module (the same weights on ONNX Runtime).
        """
        run = run or self
        jobs: dict[int, list[tuple[int, int, int, int]]] = {}  # window length -> (item, start, end, lo)
        padded = []
        for item, mel in enumerate(mels):
            tail = torch.full((mel.shape[0], TAIL_FRAMES), SILENT_LOG_MEL, device=mel.device, dtype=mel.dtype)
            padded.append(torch.cat([mel, tail], 1))
            frames = mel.shape[1]
            for start in range(0, frames, chunk_frames):
                end = min(start + chunk_frames, frames)
                lo = max(0, start - CONTEXT_FRAMES)
                hi = padded[item].shape[1] if end == frames else min(padded[item].shape[1], end + CONTEXT_FRAMES)
                jobs.setdefault(hi - lo, []).append((item, start, end, lo))
        pieces: dict[tuple[int, int], torch.Tensor] = {}
        for width, group in jobs.items():
            for k in range(0, len(group), max_rows):
                rows = group[k : k + max_rows]
                audio = run(torch.stack([padded[i][:, lo : lo + width] for i, _, _, lo in rows]))
                for (i, start, end, lo), wave in zip(rows, audio):
                    pieces[(i, start)] = wave[(start - lo) * HOP_LENGTH : (end - lo) * HOP_LENGTH]
        return [torch.cat([pieces[(i, s)] for s in range(0, mel.shape[1], chunk_frames)]) for i, mel in enumerate(mels)]

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """One (80, T) mel -> (T * 256,) waveform of the whole signal at once (the reference for chunking)."""
        tail = torch.full((mel.shape[0], TAIL_FRAMES), SILENT_LOG_MEL, device=mel.device, dtype=mel.dtype)
        return self(torch.cat([mel, tail], 1)[None])[0][: mel.shape[1] * HOP_LENGTH]
