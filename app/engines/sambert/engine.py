"""The sambert engine: ModelScope Sambert-HifiGan folders on our own runtime (batched, FP16), no kantts/ttsfrd."""
from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from app.engines.base import NEUTRAL, Utterance, resolve_device
from app.errors import EngineUnavailableError, TTSInputError

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 32  # items one acoustic/vocoder pass takes (the decoder loop costs the same for 1 or 32 on GPU)
WARMUP_TEXT = "欢迎使用语音合成。"  # one short sentence per voice at load: frontend dictionaries, kernels, allocator
FP16_NOTE = "fp16 (text encoder and durations fp32)"


class SambertEngine:
    """Every voice of one Sambert-HifiGan folder; speakers are voices (or voice/speaker for multi-speaker ones).

    Inference has no randomness (dropout is off, durations are predicted), so `Utterance.seed` changes nothing.
    Emotions come from the folder (an `emotion_list` in am/config.yaml's linguistic_unit, or a dict/ table);
    an emotion a voice lacks is spoken neutrally.
    """

    name = "sambert"
    max_batch_size = MAX_BATCH_SIZE

    def __init__(self, model: str) -> None:
        self.model_path = Path(model).expanduser()
        self.sample_rate = 16000
        self.speakers: tuple[str, ...] = self._peek_voices()
        self.emotions: tuple[str, ...] = (NEUTRAL,)
        self.default_speaker = self.speakers[0] if self.speakers else ""
        self.duration_scale = 1.0  # > 1 speaks slower: predicted frames per symbol are multiplied before rounding
        self.note: str | None = None  # a visible remark, e.g. why FP16 is not in force
        self._voices: dict = {}  # voice name -> SambertVoice
        self._frontends: dict = {}  # voice name -> SambertFrontend (its phone table)
        self._targets: dict[str, tuple[str, str]] = {}  # speaker label -> (voice, speaker symbol)
        self._device = "cpu"
        self._fp16 = False
        self._lock = threading.Lock()

    def _peek_voices(self) -> tuple[str, ...]:
        """Voice names from voices/voices.json without loading anything (empty if unreadable; load() explains)."""
        try:
            return tuple(json.loads((self.model_path / "voices" / "voices.json").read_text("utf-8"))["voices"])
        except (OSError, ValueError, KeyError, TypeError):
            return ()

    @property
    def device(self) -> str:
        return self._device

    @property
    def fp16_supported(self) -> bool:
        return self._device.startswith("cuda")

    @property
    def precision(self) -> str:
        return FP16_NOTE if self._fp16 else "fp32"

    def load(self, device: str = "auto", fp16: bool = True) -> None:
        """Read and check the folder, put every voice on the device, warm each one up."""
        from app.engines.sambert.folder import load_model_folder
        from app.engines.sambert.frontend import SambertFrontend
        from app.engines.sambert.runtime import SambertVoice

        self._device = resolve_device(device)
        folder = load_model_folder(self.model_path)  # ModelFolderError (an EngineUnavailableError) names the file
        rates = {v.sample_rate_hz for v in folder.voices.values()}
        if len(rates) != 1:
            raise EngineUnavailableError(f"{self.model_path}: voices use different sample rates {sorted(rates)}")
        self.sample_rate = rates.pop()
        try:
            self._frontends = {name: SambertFrontend(files.tables) for name, files in folder.voices.items()}
        except ImportError as err:
            raise EngineUnavailableError(f"the sambert frontend needs jieba and pypinyin: {err}") from None
        self._voices = {name: SambertVoice(files, self._device) for name, files in folder.voices.items()}
        self._targets, emotions = {}, []
        for name, voice in self._voices.items():
            for speaker in voice.speakers:
                label = name if len(voice.speakers) == 1 else f"{name}/{speaker}"
                self._targets[label] = (name, speaker)
            emotions += [e.removeprefix("emotion_") for e in voice.emotions if e.removeprefix("emotion_") not in emotions]
        self.speakers = tuple(self._targets)
        self.default_speaker = self.speakers[0]
        self.emotions = tuple([NEUTRAL] + [e for e in emotions if e != NEUTRAL])
        self.set_precision(fp16)
        self.synthesize([Utterance(WARMUP_TEXT, label) for label in self.speakers])

    def set_precision(self, fp16: bool) -> str:
        """Recast decoder, postnet and vocoder in place; FP16 without CUDA stays FP32 with a warning."""
        if fp16 and not self.fp16_supported:
            self.note = f"FP16 needs CUDA; running FP32 on {self._device}"
            warnings.warn(self.note, RuntimeWarning, stacklevel=2)
            fp16 = False
        else:
            self.note = None
        with self._lock:
            for voice in self._voices.values():
                voice.set_fp16(fp16)
            self._fp16 = fp16
        return self.precision

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        """The emotions this speaker's voice was trained on (engine.emotions is the union over voices)."""
        target = self._targets.get(speaker) if self._voices else None
        if target is None:
            return self.emotions
        trained = self._voices[target[0]].emotions
        return tuple(e for e in self.emotions if f"emotion_{e}" in trained) or (NEUTRAL,)

    def check(self, speaker: str, emotion: str) -> None:
        """Refuse, naming the values, an emotion this speaker's voice does not have (the service asks at the edge)."""
        if emotion not in self.emotions_for(speaker):
            raise TTSInputError(f"speaker {speaker!r} has no emotion {emotion!r}; it has: {', '.join(self.emotions_for(speaker))}")

    def symbols(self, utterance: Utterance) -> str:
        """The KAN-TTS symbol string this engine feeds the acoustic model for one utterance."""
        voice_name, speaker = self._targets[utterance.speaker]
        voice = self._voices[voice_name]
        emotion = f"emotion_{utterance.emotion}"
        if emotion not in voice.emotions:  # the voice was not trained on it: speak neutrally
            log.info("voice %s has no emotion %r; using neutral", voice_name, utterance.emotion)
            emotion = "emotion_neutral"
        return self._frontends[voice_name].symbols(utterance.text, emotion, speaker)

    def speakable(self, text: str) -> bool:
        """Whether the frontend finds at least one syllable (works before load, with the default phone set)."""
        if not self._frontends:
            from app.engines.sambert.frontend import SambertFrontend

            self._frontends = {"": SambertFrontend()}
        frontend = next(iter(self._frontends.values()))
        return any(not s.startswith("{#") for s in frontend.symbols(text).split())

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Group items by voice, run each group in batches of at most max_batch_size; outputs in input order."""
        from app.engines.sambert.runtime import SymbolItem

        if not self._voices:
            raise RuntimeError("SambertEngine.synthesize called before load()")
        out: list[np.ndarray | None] = [None] * len(batch)
        groups: dict[str, list[tuple[int, str]]] = {}
        for index, utterance in enumerate(batch):
            symbols = self.symbols(utterance)
            if symbols:
                groups.setdefault(self._targets[utterance.speaker][0], []).append((index, symbols))
            else:  # nothing pronounceable (the service normally filters these out)
                out[index] = np.zeros(0, dtype=np.float32)
        with self._lock:
            for voice_name, items in groups.items():
                voice = self._voices[voice_name]
                for start in range(0, len(items), self.max_batch_size):
                    chunk = items[start : start + self.max_batch_size]
                    results = voice.synthesize([SymbolItem(s, self.duration_scale) for _, s in chunk])
                    for (index, _), result in zip(chunk, results):
                        out[index] = result.waveform
        assert all(w is not None for w in out)
        return out  # type: ignore[return-value]

    def unload(self) -> None:
        """Drop every voice and return device memory."""
        with self._lock:
            self._voices, self._frontends = {}, {}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
