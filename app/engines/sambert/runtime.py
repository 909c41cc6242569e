"""One voice resident on a device: symbol strings in, waveforms out, batched, FP16 where it is safe."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from app import spans
from app.engines.precision import DTYPES, cast
from app.engines.sambert.acoustic import AcousticInput, SambertAcoustic
from app.engines.sambert.controls import apply_gain, pitch_affine
from app.engines.sambert.folder import ModelFolderError, VoiceFiles
from app.engines.sambert.static_decoder import StaticPncaDecoder
from app.engines.sambert.symbols import SymbolTables
from app.engines.sambert.vocoder import HifiGanGenerator

OPTIONAL_BUFFERS = ("text_encoder.ling_enc.position_enc.position_enc", "variance_adaptor.dur_position_encoder.inv_timescales")


@dataclass(frozen=True)
class SymbolItem:
    """One utterance for the runtime: encoded by the voice's tables."""

    symbols: str  # "{phone$tone$syl$word$emotion$speaker} ..." as the KAN-TTS frontend writes it
    duration_scale: float = 1.0  # > 1 speaks slower (frames per symbol are multiplied before rounding)
    pitch_semitones: float = 0.0  # shift of the predicted pitch on voiced symbols (controls.py)
    volume_db: float = 0.0  # gain on this item's waveform


@dataclass(frozen=True)
class Synthesis:
    """One item's results."""

    waveform: np.ndarray  # float32 samples in [-1, 1]
    mel: np.ndarray  # (frames, num_mels) float32 postnet output
    durations: np.ndarray  # (symbols,) int64 frames per symbol
    pitch: np.ndarray  # (symbols,) float32 normalised pitch used (prediction, shifted by the item's pitch control)
    energy: np.ndarray  # (symbols,) float32 normalised energy prediction


class SambertVoice:
    """A loaded voice: acoustic model + vocoder on one device."""

    def __init__(self, files: VoiceFiles, device: str = "cpu"):
        self.name = files.name
        self.tables: SymbolTables = files.tables
        self.speakers, self.emotions = files.speakers, files.emotions
        self.sample_rate_hz = files.sample_rate_hz
        self.hop_samples = files.vocoder.hop_samples
        self.device = torch.device(device)
        self.acoustic = SambertAcoustic(files.acoustic)
        state = {k: v for k, v in files.acoustic_state.items() if k in self.acoustic.state_dict()}
        missing = [k for k in self.acoustic.state_dict() if k not in state and k not in OPTIONAL_BUFFERS]
        if missing:
            raise ModelFolderError(f"voice {self.name!r}: acoustic checkpoint lacks {missing[:5]} ({len(missing)} in all)")
        self._load(self.acoustic, state, "acoustic")
        self.vocoder = HifiGanGenerator(files.vocoder)
        self._load(self.vocoder, files.vocoder_state, "vocoder")
        self.acoustic.eval().to(self.device)
        self.vocoder.eval().to(self.device)
        self.decoder_dtype = self.vocoder_dtype = torch.float32
        self.static: StaticPncaDecoder | None = None  # the static-shape decoder, when in use
        self.max_batch = 32  # largest batch the static decoder gets buckets for
        self.vocoder_ort = None  # app.engines.onnx_runtime.OrtPart running the vocoder, when that runtime is in force

    def _load(self, module: torch.nn.Module, state: dict, what: str) -> None:
        try:
            module.load_state_dict(state, strict=what == "vocoder")
        except RuntimeError as err:  # shape mismatches: config and checkpoint disagree
            raise ModelFolderError(f"voice {self.name!r}: {what} checkpoint does not fit its config: {err}") from None

    @property
    def fp16(self) -> bool:
        return self.decoder_dtype != torch.float32 or self.vocoder_dtype != torch.float32

    def set_fp16(self, fp16: bool) -> None:
        """Decoder, postnet and vocoder in FP16; text encoder and variance adaptor (durations) stay FP32."""
        self.set_dtypes("fp16" if fp16 else "fp32", "fp16" if fp16 else "fp32")

    def set_dtypes(self, decoder: str, vocoder: str) -> None:
        """Decoder + postnet and vocoder precisions ("fp32", "fp16", "bf16"); the encoder and durations stay FP32, so
        frame counts cannot move. A static decoder in use is rebuilt for the new dtype."""
        self.decoder_dtype, self.vocoder_dtype = DTYPES[decoder], DTYPES[vocoder]
        cast(self.acoustic.mel_decoder, self.decoder_dtype)
        cast(self.acoustic.mel_postnet, self.decoder_dtype)
        cast(self.vocoder, self.vocoder_dtype)
        self.vocoder_ort = None  # exported per dtype: the engine builds it again (EngineBase.set_precision)
        if self.static is not None:
            self.set_static_decoding(True)

    def set_static_decoding(self, on: bool) -> None:
        """Decode with the static-shape decoder (its chunks captured as CUDA graphs on CUDA) or the dynamic loop."""
        self.static = None  # free the old buffers and graphs before building new ones
        if on:
            self.static = StaticPncaDecoder(self.acoustic.mel_decoder, str(self.device), self.decoder_dtype, self.max_batch)

    def encode(self, items: Sequence[SymbolItem]) -> AcousticInput:
        """Encode and right-pad a batch of symbol strings (pad ids are 0: padding is masked everywhere)."""
        rows = [self.tables.encode(item.symbols) for item in items]
        longest = max(len(r) for r in rows)
        ids = np.zeros((len(rows), longest, 6), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        ids_t = torch.from_numpy(ids).to(self.device)
        pitch_scale = pitch_bias = None
        if any(item.pitch_semitones for item in items):  # per item: an item without a shift gets scale 1, bias 0
            pitch_scale, pitch_bias = np.ones((len(rows), longest), np.float32), np.zeros((len(rows), longest), np.float32)
            for i, item in enumerate(items):
                pitch_scale[i, : len(rows[i])], pitch_bias[i, : len(rows[i])] = pitch_affine(item.symbols, item.pitch_semitones)
            pitch_scale, pitch_bias = torch.from_numpy(pitch_scale).to(self.device), torch.from_numpy(pitch_bias).to(self.device)
        return AcousticInput(
            ling=ids_t[..., :4], emotion=ids_t[..., 4], speaker=ids_t[..., 5],
            lengths=torch.tensor([len(r) for r in rows], device=self.device),
            duration_scale=torch.tensor([item.duration_scale for item in items], device=self.device, dtype=torch.float32),
            pitch_scale=pitch_scale, pitch_bias=pitch_bias,
        )

    def _vocode(self, mel: torch.Tensor, counts: np.ndarray) -> list[np.ndarray]:
        """Batched on CUDA (fewer launches); item by item on CPU, where a padded batch runs ~3x slower per sample.

        Both give the same samples: the generator is causal, so trailing padding never reaches valid output.
        The vocoder in force runs it: torch, or the same weights on ONNX Runtime (vocoder_ort).
        """
        run = self.vocoder_ort or self.vocoder
        if self.device.type == "cuda":
            return list(run(mel.transpose(1, 2)).float().cpu().numpy())
        return [run(mel[i : i + 1, : int(n)].transpose(1, 2))[0].float().numpy() for i, n in enumerate(counts)]

    @torch.inference_mode()
    def decode_mels(self, items: Sequence[SymbolItem], dynamic: bool = False) -> list[np.ndarray]:
        """The acoustic model alone (the GPU self-check): one (frames, mels) FP32 postnet mel per item, by the static
        decoder in force (a RuntimeError if it did not take the batch) or, with dynamic, by the dynamic loop."""
        static = None if dynamic else self.static
        replays = static.graphs.replays if static is not None else 0
        out = self.acoustic.infer(self.encode(items), decoder_dtype=self.decoder_dtype, static=static)
        if not dynamic and (static is None or static.graphs.replays == replays):
            raise RuntimeError(f"voice {self.name!r}: the static decoder did not take the self-check batch")
        counts, mel = out.frame_counts.cpu().numpy(), out.mel.float().cpu().numpy()
        return [mel[i, : counts[i]] for i in range(len(items))]

    @torch.inference_mode()
    def vocode_mels(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The vocoder alone at its precision in force (the GPU self-check): (frames, mels) FP32 mels -> waveforms."""
        counts = np.array([len(m) for m in mels])
        padded = np.zeros((len(mels), int(counts.max()), mels[0].shape[1]), dtype=np.float32)
        for i, m in enumerate(mels):
            padded[i, : len(m)] = m
        waves = self._vocode(torch.from_numpy(padded).to(self.device, self.vocoder_dtype), counts)
        return [np.asarray(w[: n * self.hop_samples], dtype=np.float32) for w, n in zip(waves, counts)]

    @torch.inference_mode()
    def synthesize(self, items: Sequence[SymbolItem]) -> list[Synthesis]:
        """Run one batch; item i's result equals what it gives alone (up to float rounding)."""
        if not items:
            return []
        spans.mark("encoder")  # symbols to tensors, text encoder, variance adaptor, length regulator
        batch = self.encode(items)
        out = self.acoustic.infer(batch, decoder_dtype=self.decoder_dtype, static=self.static)
        counts = out.frame_counts.cpu().numpy()
        spans.annotate("decoder", frames=int(counts.sum()))
        spans.mark("vocoder")  # ends with every result copied to the host
        waves = self._vocode(out.mel.to(self.vocoder_dtype), counts)
        mel = out.mel.float().cpu().numpy()
        lengths = batch.lengths.cpu().numpy()
        durations, pitch, energy = (t.cpu().numpy() for t in (out.durations, out.pitch, out.energy))
        return [
            Synthesis(
                waveform=apply_gain(np.ascontiguousarray(waves[i][: counts[i] * self.hop_samples], dtype=np.float32),
                                    items[i].volume_db),
                mel=mel[i, : counts[i]], durations=durations[i, : lengths[i]],
                pitch=pitch[i, : lengths[i]], energy=energy[i, : lengths[i]],
            )
            for i in range(len(items))
        ]
