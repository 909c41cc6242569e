"""A stand-in for the ModelScope hub model, which CI cannot reach: a model folder laid out as ModelScope's and a
fake pipeline that behaves like TextToSpeechSambertHifiganPipeline at its boundary.

What it mirrors, from modelscope's sources: pipe(input=text, voice=name) -> {"output_wav": 16 kHz int16 WAV bytes};
pipe.model.frontend.gen_tacotron_symbols(text) -> "index<TAB>{unit} {unit} ..." lines whose units carry
emotion_neutral (or emotion_none on prosodic breaks, as ttsfrd writes them); pipe.model.voices[name].ling_unit has
KAN-TTS's emotion table. The audio is a tone whose pitch follows the voice and the emotion each unit carries, so
a test can hear (numerically) whether the emotion reached the "acoustic model".
"""
from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np

# KAN-TTS kantts/utils/ling_unit/emotion_types.py, in order (its row index is the embedding id).
KANTTS_EMOTIONS = (
    "emotion_none", "emotion_neutral", "emotion_angry", "emotion_disgust", "emotion_fear", "emotion_happy",
    "emotion_sad", "emotion_surprise",
)
EMO_VOICES = {  # the four voices of damo/speech_sambert-hifigan_tts_zh-cn_16k
    "zhitian_emo": ("emotion_neutral", "emotion_happy", "emotion_sad", "emotion_angry", "emotion_none"),
    "zhiyan_emo": ("emotion_neutral", "emotion_happy", "emotion_fear", "emotion_surprise"),
    "zhizhe_emo": ("emotion_neutral", "emotion_sad"),
    "zhibei_emo": ("emotion_neutral", "emotion_angry"),
}
SAMPLE_RATE_HZ = 16000
UNIT_SAMPLES = 400  # 25 ms of tone per unit


def make_model_folder(root: Path, voices: dict[str, tuple[str, ...]] = EMO_VOICES, unlisted_dir: bool = True) -> Path:
    """Write configuration.json, voices/voices.json and voices/<voice>/dict/emo_category_dict.txt under root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "text-to-speech",
        "model": {"type": "sambert-hifigan"}, "pipeline": {"type": "sambert-hifigan-tts"},
    }))
    (root / "voices").mkdir(exist_ok=True)
    (root / "voices" / "voices.json").write_text(json.dumps({"voices": [*voices, "missing_voice"]}))
    for name, categories in voices.items():
        (root / "voices" / name / "dict").mkdir(parents=True, exist_ok=True)
        (root / "voices" / name / "dict" / "emo_category_dict.txt").write_text("\n".join(categories) + "\n")
    if unlisted_dir:  # a voice folder voices.json does not list is not a voice
        (root / "voices" / "unlisted_voice").mkdir(exist_ok=True)
    return root


class FakeFrontend:
    """Like ttsfrd.TtsFrontendEngine: one line per sentence, two units per character, a break unit at the end."""

    def __init__(self, emotion_field: bool = True) -> None:
        self.emotion_field = emotion_field  # False: an old-style frontend whose units have no emotion category

    def gen_tacotron_symbols(self, text: str) -> str:
        lines = []
        for i, sentence in enumerate(s for s in text.replace("。", "。\n").splitlines() if s.strip()):
            emo, brk = ("$emotion_neutral", "$emotion_none") if self.emotion_field else ("", "")
            units = []
            for ch in sentence:
                if ch.isalnum():
                    units.append(f"{{j_c$tone1$s_begin$word_begin{emo}$F7}}")
                    units.append(f"{{ing_c$tone1$s_end$word_end{emo}$F7}}")
            units.append(f"{{#4$tone_none$s_none$word_none{brk}$F7}}")
            lines.append(f"{i}\t{' '.join(units)}")
        return "\n".join(lines) + "\n"


class FakeLingUnit:
    """The part of KAN-TTS's KanTtsLinguisticUnit the adapter reads: the emotion category table."""

    def __init__(self, categories=KANTTS_EMOTIONS) -> None:
        self._emo_category_to_id = {c: i for i, c in enumerate(categories)}


class FakeVoice:
    """One voice: turns a line of units into a tone; an unknown category raises KeyError like encode_emo_category."""

    def __init__(self, name: str, pitch_hz: float, ling_unit: FakeLingUnit) -> None:
        self.name, self.pitch_hz, self.ling_unit = name, pitch_hz, ling_unit

    def forward(self, symbols: str) -> np.ndarray:
        pieces = []
        for unit in symbols.split():
            fields = unit.strip("{}").split("$")
            emo = self.ling_unit._emo_category_to_id[fields[4]] if len(fields) > 5 else 1
            t = np.arange(UNIT_SAMPLES) / SAMPLE_RATE_HZ
            pieces.append(0.5 * np.sin(2 * np.pi * (self.pitch_hz + 40 * emo) * t))
        return np.concatenate(pieces).astype(np.float32)


class FakeSambertModel:
    """Like modelscope's SambertHifigan: frontend -> one voice.forward per line -> int16 WAV bytes."""

    def __init__(self, folder: str, frontend: FakeFrontend, ling_units: dict[str, FakeLingUnit],
                 frontend_attr: str = "frontend") -> None:
        listed = json.loads((Path(folder) / "voices" / "voices.json").read_text())["voices"]
        names = [v for v in listed if (Path(folder) / "voices" / v).is_dir()]
        self._frontend_attr = frontend_attr  # another name stands for a pipeline whose frontend cannot be reached
        setattr(self, frontend_attr, frontend)
        self.voices = {v: FakeVoice(v, 200 + 30 * i, ling_units.get(v, FakeLingUnit())) for i, v in enumerate(names)}
        self.lines: list[tuple[str, str]] = []  # (voice, symbols) handed to the acoustic model, in order

    def forward(self, text: str, voice_name: str | None = None) -> bytes:
        voice = voice_name or next(iter(self.voices))
        audio = np.zeros(0, dtype=np.float32)
        frontend = getattr(self, self._frontend_attr)
        for line in (s for s in frontend.gen_tacotron_symbols(text).splitlines() if s):
            symbols = line.strip().split("\t")[1]
            self.lines.append((voice, symbols))
            audio = np.append(audio, self.voices[voice].forward(symbols))
        return int16_wav(audio, SAMPLE_RATE_HZ)


def int16_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """The pipeline's output format: 32768 * audio as int16, mono PCM WAV."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((32768.0 * audio).clip(-32768, 32767).astype("<i2").tobytes())
    return buf.getvalue()


class FakePipeline:
    """Like TextToSpeechSambertHifiganPipeline: pipe(input=text, voice=name) -> {"output_wav": bytes}."""

    def __init__(self, model: FakeSambertModel) -> None:
        self.model = model
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, input: str, **forward_params) -> dict:
        self.calls.append((input, forward_params.get("voice")))
        return {"output_wav": self.model.forward(input, forward_params.get("voice"))}


class FakePipelineFactory:
    """Builds one FakePipeline per model folder and remembers the folders it was given."""

    def __init__(self, frontend: FakeFrontend | None = None, ling_units: dict[str, FakeLingUnit] | None = None,
                 frontend_attr: str = "frontend") -> None:
        self.frontend = frontend or FakeFrontend()
        self.ling_units = ling_units or {}
        self.frontend_attr = frontend_attr
        self.folders: list[str] = []
        self.pipe: FakePipeline | None = None

    def __call__(self, folder: str) -> FakePipeline:
        self.folders.append(folder)
        self.pipe = FakePipeline(FakeSambertModel(folder, self.frontend, self.ling_units, self.frontend_attr))
        return self.pipe
