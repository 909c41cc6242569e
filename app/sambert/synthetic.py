"""Writes random-weight Sambert-HifiGan model folders (both layouts) for tests and benchmarks, no hub needed."""
from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from app.sambert.acoustic import SambertAcoustic
from app.sambert.config import AcousticConfig, VocoderConfig
from app.sambert.symbols import DEFAULT_PHONES, DEFAULT_TONES, EMOTION_TYPES, SYLLABLE_FLAGS, WORD_SEGMENTS
from app.sambert.vocoder import HifiGanGenerator

TINY_ACOUSTIC = dict(  # a few-thousand-parameter model with every structural feature of the real one
    embedding_dim=32, encoder_num_layers=2, encoder_num_heads=2, encoder_num_units=16, encoder_ffn_inner_dim=32,
    encoder_projection_units=8, speaker_units=8, emotion_units=8, predictor_filter_size=5,
    predictor_fsmn_num_layers=2, predictor_num_memory_units=16, predictor_ffn_inner_dim=16, predictor_lstm_units=8,
    dur_pred_prenet_units=(8, 8), dur_pred_lstm_units=8, decoder_prenet_units=(16, 16), decoder_num_layers=2,
    decoder_num_heads=2, decoder_num_units=16, decoder_ffn_inner_dim=32, postnet_filter_size=9,
    postnet_fsmn_num_layers=2, postnet_num_memory_units=16, postnet_ffn_inner_dim=16, postnet_shift=3,
    postnet_lstm_units=8,
)
TINY_VOCODER = dict(channels=32, resblock_kernel_sizes=(3, 5), resblock_dilations=((1, 3), (1, 3)))
NEUTRAL_ONLY = ("emotion_neutral",)


@dataclass(frozen=True)
class FolderSpec:
    """What to write."""

    voices: tuple[str, ...] = ("test_voice",)  # voice names, in voices.json order
    size: str = "tiny"  # "tiny" (fast tests) or "real" (official sambert_16k / hifigan_v1_16k shapes)
    layout: str = "current"  # "current" (am/ckpt, voc/ckpt) or "legacy" (voices.zip, pytorch_model.bin, dict/)
    has_mask: bool = True  # False: every table one row smaller, flagged in configuration.json
    speakers: tuple[str, ...] = ("F7",)  # speaker_list of every voice
    emotions: tuple[str, ...] = ("emotion_neutral", "emotion_happy", "emotion_sad")  # emotions each voice offers
    mean_frames_per_symbol: float = 5.0  # centre of the random durations
    checkpoint_steps: tuple[int, ...] = (1000,)  # checkpoint_<step>.pth files written; the highest must win
    seed: int = 0  # weights are a pure function of the spec


def _specials(has_mask: bool) -> int:
    return 3 if has_mask else 2


def acoustic_config(spec: FolderSpec, emotions: tuple[str, ...]) -> AcousticConfig:
    """Acoustic config matching the tables a spec writes."""
    extra = _specials(spec.has_mask)
    sizes = dict(sy=len(DEFAULT_PHONES) + extra, tone=len(DEFAULT_TONES) + extra, syllable_flag=len(SYLLABLE_FLAGS) + extra,
                 word_segment=len(WORD_SEGMENTS) + extra, emotion=len(emotions) + extra, speaker=len(spec.speakers) + extra)
    return AcousticConfig(**sizes, **(TINY_ACOUSTIC if spec.size == "tiny" else {}))


def vocoder_config(spec: FolderSpec) -> VocoderConfig:
    """Vocoder config for a spec's size."""
    return VocoderConfig(**(TINY_VOCODER if spec.size == "tiny" else {}))


def random_acoustic_state(config: AcousticConfig, mean_frames: float, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose predicted durations vary around `mean_frames` (so bands and lengths vary too)."""
    torch.manual_seed(seed)
    model = SambertAcoustic(config)
    with torch.no_grad():
        for module in model.modules():  # trained LayerNorms have non-zero biases: padding bugs must show up
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
        fc = model.variance_adaptor.duration_predictor.fc
        fc.weight.mul_(3.0)
        fc.bias.fill_(math.log1p(mean_frames))
    return {k: v.clone() for k, v in model.state_dict().items()}


def random_vocoder_state(config: VocoderConfig, seed: int, legacy: bool) -> dict[str, torch.Tensor]:
    """Random generator weights in KAN-TTS naming, stored with weight norm (weight_g, weight_v) like real ones."""
    torch.manual_seed(seed + 1)
    ours = HifiGanGenerator(config).state_dict()
    out = {}
    for key, value in ours.items():
        parts = key.split(".")
        if parts[0] in ("conv_pre", "conv_post"):
            base = f"{parts[0]}.conv1d"
        elif parts[0] == "ups":
            base = f"ups.{parts[1]}.deconv" if legacy else f"transpose_upsamples.{parts[1]}.1.deconv"
        elif parts[0] == "repeats":
            base = f"repeat_ups.{parts[1]}.2.conv1d" if legacy else f"repeat_upsamples.{parts[1]}.2.conv1d"
        else:  # blocks.<n>.convs<1|2>.<j>
            head = "resblocks" if legacy else "conv_blocks"
            base = f"{head}.{parts[1]}.{parts[2]}.{parts[3]}.conv1d"
        if parts[-1] == "bias":
            out[f"{base}.bias"] = value
        else:
            norm = value.flatten(1).norm(dim=1).view(-1, *([1] * (value.dim() - 1)))
            out[f"{base}.weight_v"] = value
            out[f"{base}.weight_g"] = norm * (0.5 + torch.rand_like(norm))  # g != |v|: folding must be right
    return out


def _am_params(config: AcousticConfig) -> dict:
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    for key in ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker"):
        params.pop(key)
    params.update(encoder_dropout=0.1, encoder_attention_dropout=0.1, encoder_relu_dropout=0.1, predictor_dropout=0.1,
                  decoder_dropout=0.1, decoder_attention_dropout=0.1, decoder_relu_dropout=0.1, postnet_dropout=0.1,
                  MAS=False)
    return params


def _voc_params(config: VocoderConfig, legacy: bool) -> dict:
    if legacy:
        return {"resblock": "1", "num_mels": config.in_channels, "upsample_initial_channel": config.channels,
                "upsample_rates": list(config.upsample_scales), "upsample_kernel_sizes": list(config.upsample_kernel_sizes),
                "resblock_kernel_sizes": list(config.resblock_kernel_sizes),
                "resblock_dilation_sizes": [list(d) for d in config.resblock_dilations]}
    return {"in_channels": config.in_channels, "out_channels": 1, "channels": config.channels,
            "kernel_size": config.kernel_size, "upsample_scales": list(config.upsample_scales),
            "upsample_kernal_sizes": list(config.upsample_kernel_sizes),
            "resblock_kernel_sizes": list(config.resblock_kernel_sizes),
            "resblock_dilations": [list(d) for d in config.resblock_dilations], "bias": True, "causal": True,
            "nonlinear_activation": "LeakyReLU", "nonlinear_activation_params": {"negative_slope": config.negative_slope},
            "use_weight_norm": True}


def _save(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_model_folder(root: str | Path, spec: FolderSpec = FolderSpec()) -> Path:
    """Write a complete folder under `root` (created); returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    legacy = spec.layout == "legacy"
    if spec.layout not in ("current", "legacy"):
        raise ValueError(f"layout={spec.layout!r} must be 'current' or 'legacy'")
    # Current folders use the global emotion table; legacy ones ship their own (ids = positions in dict/).
    emotion_table = ("emotion_none",) + tuple(spec.emotions) if legacy else EMOTION_TYPES
    am_config, voc_config = acoustic_config(spec, emotion_table), vocoder_config(spec)
    unit = {"cleaners": "english_cleaners", "lfeat_type_list": "sy,tone,syllable_flag,word_segment,emo_category,speaker_category",
            "speaker_list": ",".join(spec.speakers)}
    files: dict[str, bytes] = {"voices/voices.json": json.dumps({"voices": list(spec.voices)}).encode()}
    audio = {"audio_config": {"sampling_rate": 16000, "hop_length": voc_config.hop_samples, "n_mels": 80}}
    for index, name in enumerate(spec.voices):
        vdir = f"voices/{name}"
        am_state = random_acoustic_state(am_config, spec.mean_frames_per_symbol, spec.seed + 10 * index)
        voc_state = random_vocoder_state(voc_config, spec.seed + 10 * index, legacy)
        files[f"{vdir}/audio_config.yaml"] = yaml.safe_dump(audio).encode()
        if legacy:
            files[f"{vdir}/am/pytorch_model.bin"] = _save({"fsnet": am_state})
            files[f"{vdir}/vocoder/pytorch_model.bin"] = _save({"generator": voc_state})
            tables = {"sy_dict.txt": DEFAULT_PHONES, "tone_dict.txt": DEFAULT_TONES,
                      "syllable_flag_dict.txt": SYLLABLE_FLAGS, "word_segment_dict.txt": WORD_SEGMENTS,
                      "emo_category_dict.txt": emotion_table, "speaker_dict.txt": spec.speakers}
            for file_name, names in tables.items():
                files[f"{vdir}/dict/{file_name}"] = ("\n".join(names) + "\n").encode()
        else:
            am_yaml = {"model_type": "sambert", "Model": {"KanTtsSAMBERT": {"params": _am_params(am_config)}},
                       "linguistic_unit": dict(unit, emotion_list=",".join(spec.emotions))}
            files[f"{vdir}/am/config.yaml"] = yaml.safe_dump(am_yaml).encode()
            files[f"{vdir}/voc/config.yaml"] = yaml.safe_dump(
                {"model_type": "hifigan", "Model": {"Generator": {"params": _voc_params(voc_config, False)}}}).encode()
            for step in spec.checkpoint_steps:  # older steps get different weights: loading them would show
                decoy = step != max(spec.checkpoint_steps)
                state = random_acoustic_state(am_config, spec.mean_frames_per_symbol, spec.seed + 999) if decoy else am_state
                files[f"{vdir}/am/ckpt/checkpoint_{step}.pth"] = _save({"model": state})
                vstate = random_vocoder_state(voc_config, spec.seed + 999, False) if decoy else voc_state
                files[f"{vdir}/voc/ckpt/checkpoint_{step}.pth"] = _save({"model": {"generator": vstate}})
    config = {"framework": "pytorch", "task": "text-to-speech",
              "model": {"type": "sambert-hifigan", "lang_type": "zhcn", "sample_rate": 16000,
                        "am": {"linguistic_unit": {"has_mask": spec.has_mask}}}}
    if legacy:
        config["model"]["am"] = {"am": _am_params(am_config), "linguistic_unit": dict(
            unit, has_mask=spec.has_mask, **{k: f"dict/{k}_dict.txt" for k in ("sy", "tone", "syllable_flag", "word_segment")},
            emo_category="dict/emo_category_dict.txt", speaker_category="dict/speaker_dict.txt")}
        config["model"]["vocoder"] = _voc_params(voc_config, True)
        with zipfile.ZipFile(root / "voices.zip", "w") as archive:
            for rel, data in files.items():
                archive.writestr(rel, data)
    else:
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    (root / "configuration.json").write_text(json.dumps(config, indent=2))
    return root
