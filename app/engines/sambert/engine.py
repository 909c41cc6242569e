"""The sambert engine: ModelScope Sambert-HifiGan folders on our own runtime (batched, FP16), no kantts/ttsfrd."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from app import spans
from app.engines import precision
from app.engines.base import EMOTIONS_TRAINED, NEUTRAL, WARMUP_TEXT, EngineBase, Utterance
from app.engines.sambert.folder import ModelFolderError, read_catalog
from app.engines.sambert.hub import Downloader, download_snapshot, looks_like_hub_id, resolve_model_folder
from app.errors import EngineUnavailableError

MAX_BATCH_SIZE = 32  # items one acoustic/vocoder pass takes (the decoder loop costs the same for 1 or 32 on GPU)
# What "FP16 on" runs per module (the text encoder and durations always stay FP32, so frame counts cannot move).
# The GPU suite measures fp16 and bf16 for each; flip a module here when its table says so.
HALF_PRECISION = {"decoder": "fp16", "vocoder": "fp16"}
ALWAYS_FP32 = "text encoder and durations"
# The GPU self-check decodes the warm-up sentence per voice: in up to four of its speakers, or (one speaker) at these
# duration scales, so four items of different lengths fill batch bucket 4.
SELF_CHECK_SCALES = (1.0, 1.3, 0.8, 1.6)


def speaker_label(voice: str, speaker: str, speakers: Sequence[str]) -> str:
    """How a speaker is offered: the voice name, or voice/speaker for a multi-speaker voice."""
    return voice if len(speakers) == 1 else f"{voice}/{speaker}"


class SambertEngine(EngineBase):
    """Every voice of one Sambert-HifiGan folder; speakers are voices (or voice/speaker for multi-speaker ones).

    Inference has no randomness (dropout is off, durations are predicted), so `Utterance.seed` changes nothing.
    Each voice offers the emotions app.engines.sambert.emotions finds for it. Speed, pitch and volume are rendered
    per item by the model (app.engines.sambert.controls), so a batch may mix them freely.
    """

    name = "sambert"
    max_batch_size = MAX_BATCH_SIZE
    emotion_kind = EMOTIONS_TRAINED
    controls_in_model = frozenset({"speed", "pitch", "volume"})
    cuda_graphs_capable = True
    half_modules = ("decoder", "vocoder")
    onnx_parts = ("vocoder",)  # the text encoder + variance adaptor stay in torch (see README: ONNX Runtime)

    def __init__(self, model: str, emotions: Mapping[str, tuple[str, ...]] | None = None,
                 downloader: Downloader | None = None, frontend: Callable | None = None) -> None:
        super().__init__()
        self.model = model  # folder or hub id
        self.emotion_options = dict(emotions or {})  # voice -> emotions it was trained on (--emotions)
        self._downloader = downloader or download_snapshot
        # tables -> frontend; injectable (e.g. frontend.PrecomputedFrontend on a GPU box without jieba/pypinyin)
        self._frontend_factory = frontend
        self._voices: dict = {}  # voice name -> SambertVoice
        self._frontends: dict = {}  # voice name -> SambertFrontend (its phone table)
        self._targets: dict[str, tuple[str, str]] = {}  # speaker label -> (voice, speaker symbol)
        self._offered: dict[str, tuple[str, ...]] = {}  # speaker label -> emotions its voice offers
        self.half_precision = dict(HALF_PRECISION)
        self._lock = threading.Lock()
        if not looks_like_hub_id(model):  # a cheap peek at the catalog; load() explains any problem
            try:
                self._offer(read_catalog(model, self.emotion_options).voices.values())
            except ModelFolderError:
                pass

    def _offer(self, voices) -> None:
        """Speakers, per-speaker emotions and their union from catalog voices or loaded ones (same fields)."""
        self._targets, self._offered, emotions = {}, {}, [NEUTRAL]
        for voice in voices:
            for speaker in voice.speakers:
                label = speaker_label(voice.name, speaker, voice.speakers)
                self._targets[label], self._offered[label] = (voice.name, speaker), voice.emotions
            emotions += [e for e in voice.emotions if e not in emotions]
        self.speakers = tuple(self._targets)
        self.default_speaker = self.speakers[0] if self.speakers else ""
        self.emotions = tuple(emotions)

    @property
    def loaded(self) -> bool:
        return bool(self._voices)

    def _load_model(self) -> None:
        """Find (or download) the folder, read and check it, put every voice on the device."""
        from app.engines.sambert.folder import load_model_folder
        from app.engines.sambert.frontend import SambertFrontend
        from app.engines.sambert.runtime import SambertVoice

        path = resolve_model_folder(self.model, self._downloader, self.name)
        folder = load_model_folder(path, self.emotion_options)  # ModelFolderError (an EngineUnavailableError) names it
        rates = {v.sample_rate_hz for v in folder.voices.values()}
        if len(rates) != 1:
            raise EngineUnavailableError(f"{path}: voices use different sample rates {sorted(rates)}")
        self.sample_rate = rates.pop()
        try:
            make = self._frontend_factory or SambertFrontend
            self._frontends = {name: make(files.tables) for name, files in folder.voices.items()}
        except ImportError as err:
            raise EngineUnavailableError(f"the sambert frontend needs jieba and pypinyin: {err}") from None
        self._voices = {name: SambertVoice(files, self.device) for name, files in folder.voices.items()}
        for index, text in enumerate(folder.notes):
            self.note(f"folder:{index}", text)
        self._offer(self._voices.values())

    @property
    def fp16_label(self) -> str:
        return precision.label(self.half_table(True), always_fp32=ALWAYS_FP32)

    def set_half_precision(self, decoder: str, vocoder: str) -> str:
        """Choose what FP16-on runs per module (fp16, bf16 or fp32; the GPU suite measures each); recasts if in force."""
        self.half_precision = precision.check_table({"decoder": decoder, "vocoder": vocoder}, ("decoder", "vocoder"))
        return self.set_precision(self.fp16)

    def _cast(self, fp16: bool) -> None:
        """Decoder, postnet and vocoder as the table says; the text encoder and durations stay FP32."""
        table = self.half_table(fp16)
        with self._lock:
            for voice in self._voices.values():
                voice.set_dtypes(table["decoder"], table["vocoder"])

    def _release(self) -> None:
        with self._lock:
            self._voices, self._frontends = {}, {}

    def _use_onnx(self, progress) -> str:
        from app.engines.onnx_runtime import OrtPart, cache_root

        parts, folder = {}, Path(self.onnx_dir or cache_root() / "sambert")
        for name, voice in self._voices.items():
            parts[name] = OrtPart.build(voice.vocoder, f"sambert-{name}-hifigan", folder, voice.hop_samples,
                                        voice.vocoder.config.in_channels, progress=progress)
        with self._lock:
            for name, part in parts.items():
                self._voices[name].vocoder_ort = part
        described = [p.describe() for p in parts.values()]
        return "vocoder: " + (described[0] if len(described) == 1 else f"{len(described)} voices: " + "; ".join(described))

    def _drop_onnx(self) -> None:
        with self._lock:
            for voice in self._voices.values():
                voice.vocoder_ort = None

    def set_static_decoding(self, on: bool) -> None:
        """Every voice decodes with its static-shape decoder (CUDA graphs on CUDA) or the dynamic loop."""
        with self._lock:
            for voice in self._voices.values():
                voice.max_batch = self.max_batch_size
                voice.set_static_decoding(on)

    def _capture_graphs(self) -> None:
        self.set_static_decoding(True)

    def _release_graphs(self) -> None:
        self.set_static_decoding(False)

    def _graphs_description(self) -> str:
        decoders = [v.static for v in self._voices.values() if v.static is not None]
        if not decoders:
            return ""
        return f"{len(decoders)} voice(s): " + "; ".join(d.describe() for d in decoders)

    def _graph_sets(self) -> list:
        return [v.static.graphs for v in self._voices.values() if v.static is not None]

    def self_check_items(self) -> dict[str, list]:
        """Per voice, the GPU self-check's items: the warm-up sentence in up to four speakers, or at four speeds."""
        from app.engines.sambert.runtime import SymbolItem

        plan: dict[str, list] = {}
        for label, (voice_name, _) in self._targets.items():
            plan.setdefault(voice_name, []).append(label)
        out = {}
        for voice_name, labels in plan.items():
            symbols = [self.symbols(Utterance(WARMUP_TEXT, label)) for label in labels[:4]]
            out[voice_name] = ([SymbolItem(s) for s in symbols] if len(symbols) > 1
                               else [SymbolItem(symbols[0], scale) for scale in SELF_CHECK_SCALES])
        return out

    def _check_decode(self, dynamic: bool) -> list:
        from app.engines.self_check import Decoded

        with self._lock:
            return [Decoded(mel, True) for name, items in self.self_check_items().items()
                    for mel in self._voices[name].decode_mels(items, dynamic=dynamic)]

    def _check_vocode(self, mels: list) -> list:
        out, start = [], 0
        with self._lock:
            for name, items in self.self_check_items().items():
                out += self._voices[name].vocode_mels(mels[start : start + len(items)])
                start += len(items)
        return out

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        """The emotions this speaker's voice offers (engine.emotions is the union over voices)."""
        return self._offered.get(speaker, self.emotions)

    def symbols(self, utterance: Utterance) -> str:
        """The KAN-TTS symbol string fed to the acoustic model for one checked utterance (its emotion, never another)."""
        voice_name, speaker = self._targets[utterance.speaker]
        return self._frontends[voice_name].symbols(utterance.text, f"emotion_{utterance.emotion}", speaker)

    def speakable(self, text: str) -> bool:
        """Whether the frontend finds at least one syllable (works before load, with the default phone set)."""
        if not self._frontends:
            from app.engines.sambert.frontend import SambertFrontend

            self._frontends = {"": SambertFrontend()}
        frontend = next(iter(self._frontends.values()))
        return any(not s.startswith("{#") for s in frontend.symbols(text).split())

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Group items by voice, run each group in batches of at most max_batch_size; outputs in input order."""
        from app.engines.sambert.controls import duration_scale
        from app.engines.sambert.runtime import SymbolItem

        if not self._voices:
            raise RuntimeError("SambertEngine.synthesize called before load()")
        spans.mark("frontend")
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(batch)  # unpronounceable items stay empty
        groups: dict[str, list[tuple[int, SymbolItem]]] = {}
        for index, u in enumerate(batch):
            symbols = self.symbols(u)
            if symbols:
                item = SymbolItem(symbols, duration_scale(u.speed), pitch_semitones=u.pitch, volume_db=u.volume)
                groups.setdefault(self._targets[u.speaker][0], []).append((index, item))
        with self._lock:
            for voice_name, items in groups.items():
                voice = self._voices[voice_name]
                for start in range(0, len(items), self.max_batch_size):
                    chunk = items[start : start + self.max_batch_size]
                    for (index, _), result in zip(chunk, voice.synthesize([item for _, item in chunk])):
                        out[index] = result.waveform
        return out
