"""Frozen model configurations read from a folder's YAML/JSON, checked once at load time."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

SAMPLE_RATE_HZ = 16000  # every supported voice is 16 kHz
HOP_SAMPLES = 200  # 12.5 ms frame shift at 16 kHz: samples per mel frame


@dataclass(frozen=True)
class AcousticConfig:
    """Sambert acoustic-model sizes (KAN-TTS `Model.KanTtsSAMBERT.params` plus table sizes)."""

    sy: int  # rows of the phone embedding (from the checkpoint)
    tone: int  # rows of the tone embedding
    syllable_flag: int  # rows of the syllable-position embedding
    word_segment: int  # rows of the word-position embedding
    emotion: int  # rows of the emotion embedding
    speaker: int  # rows of the speaker embedding
    max_len: int = 800  # symbols covered by the stored position table (longer inputs extend it)
    embedding_dim: int = 512  # width of the summed symbol embeddings
    encoder_num_layers: int = 8  # FFT blocks in the text encoder
    encoder_num_heads: int = 8  # attention heads in the text encoder
    encoder_num_units: int = 128  # text-encoder model width
    encoder_ffn_inner_dim: int = 1024  # text-encoder feed-forward width
    encoder_projection_units: int = 32  # text-encoder output width
    speaker_units: int = 32  # speaker embedding width
    emotion_units: int = 32  # emotion embedding width
    predictor_filter_size: int = 41  # FSMN memory taps in the pitch/energy predictors
    predictor_fsmn_num_layers: int = 3  # FSMN layers in the pitch/energy predictors
    predictor_num_memory_units: int = 128  # FSMN width in the pitch/energy predictors
    predictor_ffn_inner_dim: int = 256  # FSMN feed-forward width in the predictors
    predictor_shift: int = 0  # FSMN look-back shift in the predictors (taps moved to the past)
    predictor_lstm_units: int = 128  # BLSTM width per direction in the predictors
    dur_pred_prenet_units: tuple[int, ...] = (128, 128)  # duration predictor prenet widths
    dur_pred_lstm_units: int = 128  # duration predictor 2-layer LSTM width
    decoder_prenet_units: tuple[int, ...] = (256, 256)  # decoder prenet widths
    decoder_num_layers: int = 12  # PNCA layers in the decoder
    decoder_num_heads: int = 8  # attention heads in the decoder
    decoder_num_units: int = 128  # decoder model width
    decoder_ffn_inner_dim: int = 1024  # decoder feed-forward width
    outputs_per_step: int = 3  # mel frames the decoder emits per autoregressive step
    num_mels: int = 80  # mel channels
    postnet_filter_size: int = 41  # FSMN memory taps in the postnet
    postnet_fsmn_num_layers: int = 4  # FSMN layers in the postnet
    postnet_num_memory_units: int = 256  # FSMN width in the postnet
    postnet_ffn_inner_dim: int = 512  # FSMN feed-forward width in the postnet
    postnet_shift: int = 17  # FSMN look-back shift in the postnet
    postnet_lstm_units: int = 128  # postnet LSTM width

    @property
    def memory_dim(self) -> int:
        """Width of one decoder memory step: r frames of text plus one speaker and one emotion vector."""
        return self.encoder_projection_units * self.outputs_per_step + self.speaker_units + self.emotion_units

    @classmethod
    def from_params(cls, params: Mapping[str, Any], table_sizes: Mapping[str, int]) -> "AcousticConfig":
        """Build from a KAN-TTS params mapping; unknown keys (dropouts, optimiser) are ignored."""
        unsupported = [k for k in ("SE", "NSF", "FP", "using_byte") if params.get(k)]
        if unsupported:
            raise ValueError(f"acoustic model options {unsupported} are not supported by the native runtime")
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in params.items() if k in names}
        values.update(table_sizes)
        for key in ("dur_pred_prenet_units", "decoder_prenet_units"):
            if key in values:
                values[key] = tuple(int(u) for u in values[key])
        for shift_key in ("predictor_shift", "postnet_shift"):
            if isinstance(values.get(shift_key), (list, tuple)):
                raise ValueError(f"{shift_key}={values[shift_key]!r}: per-layer shifts are not supported")
        config = cls(**values)
        if config.encoder_num_units % config.encoder_num_heads or config.decoder_num_units % config.decoder_num_heads:
            raise ValueError("encoder/decoder units must be divisible by their head counts")
        return config


@dataclass(frozen=True)
class VocoderConfig:
    """Causal HiFi-GAN generator sizes (KAN-TTS `Model.Generator.params`)."""

    in_channels: int = 80  # mel channels in
    channels: int = 256  # width after the first convolution (halved at every upsampling)
    kernel_size: int = 7  # kernel of the first, last and repeat-upsampling convolutions
    upsample_scales: tuple[int, ...] = (10, 5, 2, 2)  # product = samples per mel frame (hop)
    upsample_kernel_sizes: tuple[int, ...] = (20, 10, 4, 4)  # transposed-convolution kernels
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)  # one residual block per kernel size
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5, 7),) * 3  # dilations per residual block
    negative_slope: float = 0.1  # LeakyReLU slope inside the generator

    @property
    def hop_samples(self) -> int:
        """Samples generated per mel frame."""
        hop = 1
        for scale in self.upsample_scales:
            hop *= scale
        return hop

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "VocoderConfig":
        """Build from KAN-TTS `Generator.params` (new layout) or ModelScope's old `vocoder` section."""
        if "upsample_rates" in params:  # old layout: jik876-style names
            if str(params.get("resblock", "1")) != "1":
                raise ValueError(f"vocoder resblock={params.get('resblock')!r}: only type '1' is supported")
            params = {
                "in_channels": params.get("num_mels", 80),
                "channels": params["upsample_initial_channel"],
                "upsample_scales": params["upsample_rates"],
                "upsample_kernal_sizes": params["upsample_kernel_sizes"],
                "resblock_kernel_sizes": params["resblock_kernel_sizes"],
                "resblock_dilations": params["resblock_dilation_sizes"],
                "causal": True,
            }
        if params.get("nsf_params") is not None:
            raise ValueError("NSF vocoders (nsf_params) are not supported by the native runtime")
        if not params.get("causal", True):
            raise ValueError("causal=False vocoders are not supported: batching relies on a causal generator")
        if int(params.get("out_channels", 1)) != 1:
            raise ValueError(f"vocoder out_channels={params.get('out_channels')}: multi-band (PQMF) is not supported")
        if params.get("repeat_upsample", True) is not True:
            raise ValueError("repeat_upsample=False vocoders are not supported")
        activation = params.get("nonlinear_activation", "LeakyReLU")
        if activation != "LeakyReLU":
            raise ValueError(f"vocoder nonlinear_activation={activation!r}: only LeakyReLU is supported")
        config = cls(
            in_channels=int(params.get("in_channels", 80)),
            channels=int(params.get("channels", 256)),
            kernel_size=int(params.get("kernel_size", 7)),
            upsample_scales=tuple(int(s) for s in params.get("upsample_scales", (10, 5, 2, 2))),
            upsample_kernel_sizes=tuple(int(k) for k in params.get("upsample_kernal_sizes", (20, 10, 4, 4))),
            resblock_kernel_sizes=tuple(int(k) for k in params.get("resblock_kernel_sizes", (3, 7, 11))),
            resblock_dilations=tuple(tuple(int(d) for d in ds) for ds in params.get("resblock_dilations", ((1, 3, 5, 7),) * 3)),
            negative_slope=float((params.get("nonlinear_activation_params") or {}).get("negative_slope", 0.1)),
        )
        if len(config.upsample_scales) != len(config.upsample_kernel_sizes):
            raise ValueError("vocoder upsample_scales and upsample kernel sizes differ in length")
        if len(config.resblock_kernel_sizes) != len(config.resblock_dilations):
            raise ValueError("vocoder resblock_kernel_sizes and resblock_dilations differ in length")
        return config
