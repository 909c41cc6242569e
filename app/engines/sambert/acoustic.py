"""Sambert acoustic model (symbols -> mel frames) with batched, per-item-exact inference."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from app import spans
from app.engines.sambert.config import AcousticConfig
from app.engines.sambert.decoder import MelDecoder
from app.engines.sambert.layers import (
    DurationPositionEncoder,
    FFTBlock,
    FsmnEncoder,
    TextPositionEncoder,
    prenet,
    run_prenet,
)


@dataclass(frozen=True)
class AcousticInput:
    """One padded batch of encoded symbols."""

    ling: torch.Tensor  # (B, L, 4) long: phone, tone, syllable flag, word flag ids
    emotion: torch.Tensor  # (B, L) long emotion ids
    speaker: torch.Tensor  # (B, L) long speaker ids
    lengths: torch.Tensor  # (B,) long: valid symbols per item
    duration_scale: torch.Tensor  # (B,) float: 1.0 = predicted speed, 2.0 = twice as long
    pitch_scale: torch.Tensor | None = None  # (B, L) float: predicted pitch p becomes scale * p + bias (controls.py)
    pitch_bias: torch.Tensor | None = None  # (B, L) float, in the model's normalised pitch units


@dataclass(frozen=True)
class AcousticOutput:
    """Per-batch results; every per-frame tensor is padded to the longest item."""

    mel: torch.Tensor  # (B, T, num_mels) postnet output, zero past each item's frames
    frame_counts: torch.Tensor  # (B,) long: valid mel frames per item
    durations: torch.Tensor  # (B, L) long frames per symbol actually used
    log_durations: torch.Tensor  # (B, L) float32 predicted log(1 + frames) before the speed scale
    pitch: torch.Tensor  # (B, L) float32 predicted (normalised) pitch per symbol
    energy: torch.Tensor  # (B, L) float32 predicted (normalised) energy per symbol
    band_widths: torch.Tensor  # (B,) long decoder attention band per item, in decoder steps


def pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """True where a position is padding."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class TextEncoder(nn.Module):
    """Symbol embeddings + FFT blocks + projection (KAN-TTS `TextFftEncoder`)."""

    def __init__(self, c: AcousticConfig):
        super().__init__()
        self.sy_emb = nn.Embedding(c.sy, c.embedding_dim)
        self.tone_emb = nn.Embedding(c.tone, c.embedding_dim)
        self.syllable_flag_emb = nn.Embedding(c.syllable_flag, c.embedding_dim)
        self.ws_emb = nn.Embedding(c.word_segment, c.embedding_dim)
        self.ling_enc = nn.Module()
        dims = [c.embedding_dim] + [c.encoder_num_units] * (c.encoder_num_layers - 1)
        self.ling_enc.fft = nn.ModuleList(
            FFTBlock(d, c.encoder_num_units, c.encoder_num_heads, c.encoder_ffn_inner_dim) for d in dims
        )
        self.ling_enc.ln = nn.LayerNorm(c.encoder_num_units, eps=1e-6)
        self.ling_enc.position_enc = TextPositionEncoder(c.max_len, c.embedding_dim)
        self.ling_proj = nn.Linear(c.encoder_num_units, c.encoder_projection_units, bias=False)
        self.scale = c.encoder_num_units**0.5

    def forward(self, ling: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.sy_emb(ling[..., 0]) + self.tone_emb(ling[..., 1])
        x = x + self.syllable_flag_emb(ling[..., 2]) + self.ws_emb(ling[..., 3])
        x = self.ling_enc.position_enc(x * self.scale)
        for block in self.ling_enc.fft:
            x = block(x, mask)
        return self.ling_proj(self.ling_enc.ln(x))


class FsmnBlstmPredictor(nn.Module):
    """FSMN + BLSTM per-symbol regressor for pitch or energy (KAN-TTS `VarFsmnRnnNARPredictor`)."""

    def __init__(self, c: AcousticConfig, d_in: int):
        super().__init__()
        self.fsmn = FsmnEncoder(
            c.predictor_filter_size, c.predictor_fsmn_num_layers, d_in,
            c.predictor_num_memory_units, c.predictor_ffn_inner_dim, c.predictor_shift,
        )
        self.blstm = nn.LSTM(c.predictor_num_memory_units, c.predictor_lstm_units, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * c.predictor_lstm_units, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.fsmn(x, mask)
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.blstm(packed)[0], batch_first=True, total_length=x.size(1))
        return self.fc(out).squeeze(-1).masked_fill(mask, 0.0)


class DurationPredictor(nn.Module):
    """Autoregressive-over-symbols log-duration predictor (KAN-TTS `VarRnnARPredictor`)."""

    def __init__(self, c: AcousticConfig, d_cond: int):
        super().__init__()
        units = c.dur_pred_prenet_units
        self.prenet = nn.Module()
        self.prenet.fcs = prenet(1, units)
        self.lstm = nn.LSTM(units[-1] + d_cond, c.dur_pred_lstm_units, num_layers=2, batch_first=True)
        self.fc = nn.Linear(c.dur_pred_lstm_units, 1)

    def forward(self, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = cond.shape
        previous = cond.new_zeros(batch, 1, 1)
        state = None
        outputs = []
        for i in range(length):  # each symbol's duration feeds the next symbol's prediction
            step_in = torch.cat([run_prenet(self.prenet.fcs, previous), cond[:, i : i + 1]], dim=-1)
            out, state = self.lstm(step_in, state)
            previous = F.relu(self.fc(out))
            outputs.append(previous[:, :, 0])
        return torch.cat(outputs, dim=1).masked_fill(mask, 0.0)


class VarianceAdaptor(nn.Module):
    """Pitch, energy and duration predictors plus length regulation (KAN-TTS `VarianceAdaptor`)."""

    def __init__(self, c: AcousticConfig):
        super().__init__()
        d_in = c.encoder_projection_units + c.emotion_units + c.speaker_units
        self.pitch_predictor = FsmnBlstmPredictor(c, d_in)
        self.energy_predictor = FsmnBlstmPredictor(c, d_in)
        self.duration_predictor = DurationPredictor(c, d_in)
        self.dur_position_encoder = DurationPositionEncoder(c.encoder_projection_units)
        self.pitch_emb = nn.Conv1d(1, c.encoder_projection_units, kernel_size=9, padding=4)
        self.energy_emb = nn.Conv1d(1, c.encoder_projection_units, kernel_size=9, padding=4)


class SambertAcoustic(nn.Module):
    """The whole acoustic model; `infer` is exact per item at any batch size and padding."""

    def __init__(self, config: AcousticConfig):
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(config)
        self.spk_tokenizer = nn.Embedding(config.speaker, config.speaker_units)
        self.emo_tokenizer = nn.Embedding(config.emotion, config.emotion_units)
        self.variance_adaptor = VarianceAdaptor(config)
        self.mel_decoder = MelDecoder(config)
        self.mel_postnet = PostNet(config)

    @torch.no_grad()
    def encode(self, batch: AcousticInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AcousticOutput]:
        """Text encoder and variance adaptor, run in the encoder's dtype (FP32): returns decoder memory."""
        c, va = self.config, self.variance_adaptor
        mask = pad_mask(batch.lengths, batch.ling.size(1))
        text = self.text_encoder(batch.ling, mask)
        emo, spk = self.emo_tokenizer(batch.emotion), self.spk_tokenizer(batch.speaker)
        pred_in = torch.cat([text, spk, emo], dim=-1)
        pitch = va.pitch_predictor(pred_in, mask, batch.lengths)
        if batch.pitch_scale is not None:  # a request's pitch control, before the embedding and durations read it
            pitch = (pitch * batch.pitch_scale + batch.pitch_bias).masked_fill(mask, 0.0)
        energy = va.energy_predictor(pred_in, mask, batch.lengths)
        text = text + va.pitch_emb(pitch.unsqueeze(1)).transpose(1, 2)
        text = text + va.energy_emb(energy.unsqueeze(1)).transpose(1, 2)
        log_dur = va.duration_predictor(torch.cat([text, spk, emo], dim=-1), mask)
        frames_float = (torch.exp(log_dur.float()) - 1.0) * batch.duration_scale.float()[:, None]
        durations = (frames_float + 0.5).long().masked_fill(mask, 0)
        band = (frames_float.masked_fill(mask, 0.0).amax(dim=1) / c.outputs_per_step + 0.5).long()
        frame_counts = durations.sum(dim=1)
        memory = self._regulate(text, spk, emo, durations, frame_counts)
        partial = AcousticOutput(
            mel=memory.new_zeros(0), frame_counts=frame_counts, durations=durations,
            log_durations=log_dur.float(), pitch=pitch.float(), energy=energy.float(), band_widths=band,
        )
        return memory, frame_counts, band, partial

    def _regulate(self, text, spk, emo, durations, frame_counts) -> torch.Tensor:
        """Repeat symbols by their durations, add in-symbol positions, group r frames per decoder step."""
        r = self.config.outputs_per_step
        batch = text.size(0)
        steps = max(1, math.ceil(int(frame_counts.max()) / r))
        n_frames = steps * r
        ends = torch.cumsum(durations, dim=1)  # (B, L)
        frame_idx = torch.arange(n_frames, device=text.device)
        symbol_of_frame = torch.searchsorted(ends, frame_idx.expand(batch, -1).contiguous(), right=True)
        valid = frame_idx[None, :] < frame_counts[:, None]
        symbol_of_frame = symbol_of_frame.clamp(max=text.size(1) - 1)
        starts = torch.gather(ends - durations, 1, symbol_of_frame)
        positions = (frame_idx[None, :] - starts + 1).masked_fill(~valid, 0).float()

        def expand(x: torch.Tensor) -> torch.Tensor:
            picked = torch.gather(x, 1, symbol_of_frame[:, :, None].expand(-1, -1, x.size(-1)))
            return picked.masked_fill(~valid[:, :, None], 0.0)

        frames_text = expand(text) + self.variance_adaptor.dur_position_encoder(positions).to(text.dtype)
        group_text = frames_text.reshape(batch, steps, r * text.size(-1))
        group_spk = expand(spk)[:, ::r]  # each decoder step sees the speaker/emotion of its first frame
        group_emo = expand(emo)[:, ::r]
        return torch.cat([group_text, group_spk, group_emo], dim=-1)

    @torch.no_grad()
    def infer(self, batch: AcousticInput, decoder_dtype: torch.dtype | None = None, static=None) -> AcousticOutput:
        """Symbols -> mel; the decoder and postnet run in `decoder_dtype` (default: the encoder's dtype).

        static: a StaticPncaDecoder (fixed shapes, CUDA graphs); None, or a batch it has no bucket for, decodes with
        the dynamic loop.
        """
        memory, frame_counts, band, out = self.encode(batch)
        dtype = decoder_dtype or memory.dtype
        r = self.config.outputs_per_step
        steps_per_item = (frame_counts + r - 1) // r
        memory = memory.to(dtype)
        spans.mark("decoder")
        dec = static.decode(memory, steps_per_item, band) if static is not None else None
        if dec is None:
            dec = self.mel_decoder(memory, steps_per_item, band)  # (B, steps, r * mels)
        spans.mark("postnet")
        dec = dec.reshape(dec.size(0), -1, self.config.num_mels)
        mask = pad_mask(frame_counts, dec.size(1))
        dec = dec.masked_fill(mask.unsqueeze(-1), 0.0)
        mel = (self.mel_postnet(dec, mask) + dec).masked_fill(mask.unsqueeze(-1), 0.0)
        return AcousticOutput(
            mel=mel, frame_counts=frame_counts, durations=out.durations, log_durations=out.log_durations,
            pitch=out.pitch, energy=out.energy, band_widths=band,
        )


class PostNet(nn.Module):
    """FSMN + LSTM residual refinement of the decoder's mel (KAN-TTS `PostNet`)."""

    def __init__(self, c: AcousticConfig):
        super().__init__()
        self.fsmn = FsmnEncoder(
            c.postnet_filter_size, c.postnet_fsmn_num_layers, c.num_mels,
            c.postnet_num_memory_units, c.postnet_ffn_inner_dim, c.postnet_shift,
        )
        self.lstm = nn.LSTM(c.postnet_num_memory_units, c.postnet_lstm_units, batch_first=True)
        self.fc = nn.Linear(c.postnet_lstm_units, c.num_mels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Unidirectional LSTM: padding after an item's last frame cannot reach its valid frames.
        return self.fc(self.lstm(self.fsmn(x, mask))[0])
