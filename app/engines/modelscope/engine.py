"""ModelScope's own Sambert-HifiGan pipeline behind the Engine interface: the fidelity reference.

This is the only module that imports modelscope's pipeline, and only inside load() (deps.py says what it needs). What it relies on, as read in the sources:
- modelscope/pipelines/audio/text_to_speech_pipeline.py: pipe(input=text, voice=NAME) -> {"output_wav": bytes};
  it has no emotion argument.
- modelscope/models/audio/tts/sambert_hifi.py: SambertHifigan.forward runs `self.frontend.gen_tacotron_symbols(text)`
  (ttsfrd) and hands each line of symbols to the voice; the pipeline's `.model` is that SambertHifigan.
- ttsfrd (a closed binary) writes every unit as {sy$tone$syllable_flag$word_segment$emotion_category$speaker}; in
  real output seen published, emotion_neutral on pronounced units and emotion_none on prosodic breaks. KAN-TTS kantts/utils/ling_unit/ling_unit.py encodes that field
  (encode_emo_category) and kantts/models/sambert/kantts_sambert.py embeds it (emo_tokenizer) into the acoustic model.
  KAN-TTS's data preparation (TextScriptConvertor.process) tags training units the same way with each utterance's
  emotion. So setting the field on the frontend's output is how an emotion reaches the acoustic model.
- modelscope/models/audio/tts/voice.py: each voice loads lazily on first use, runs at batch 1 in FP32, and picks
  cuda:$RANK whenever torch sees CUDA (kantts.train.trainer.distributed_init), whatever device the caller wanted.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from app import spans
from app.audio import wav_bytes_to_float32
from app.engines.base import EMOTIONS_TRAINED, NEUTRAL, WARMUP_TEXT, EngineBase, Utterance
from app.engines.modelscope.deps import pipeline_device, preflight, restore_scipy_kaiser
from app.engines.modelscope.emotion import EmotionFrontend, encodable_emotions, install_emotion_frontend
from app.engines.sambert.folder import read_catalog
from app.engines.sambert.hub import DEFAULT_MODEL, Downloader, check_pipeline_folder, download_snapshot, resolve_model_folder
from app.errors import EngineUnavailableError, SynthesisError

OUTPUT_WAV = "output_wav"  # modelscope.outputs.OutputKeys.OUTPUT_WAV
SAMPLE_RATE_HZ = 16000  # the zh-cn Sambert-HifiGan voices; loading each voice reads the real rate from its WAV
PRECISION = "fp32 (the ModelScope pipeline runs FP32 only)"

PipelineFactory = Callable[[str], Any]  # model folder -> object called as pipe(input=text, voice=name)


def modelscope_pipeline(model_folder: str) -> Any:
    """Default factory: modelscope's text-to-speech pipeline on a local model folder (no hub call)."""
    restore_scipy_kaiser()  # numpy 2 (requirements.txt) needs SciPy >= 1.13
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    return pipeline(Tasks.text_to_speech, model=model_folder)


class ModelScopeEngine(EngineBase):
    """ModelScope's Sambert-HifiGan pipeline: its real speakers and emotions, one sentence per call, in FP32."""

    name = "modelscope"
    DEFAULT_MODEL = DEFAULT_MODEL
    max_batch_size = 1  # the pipeline synthesizes one sentence per call; a larger batch would only pretend
    fp16_capable = False  # modelscope's Voice builds and runs its models in FP32; nothing here recasts them
    fp32_label = PRECISION
    emotion_kind = EMOTIONS_TRAINED
    preflight = staticmethod(preflight)

    def __init__(self, model: str = DEFAULT_MODEL, pipeline_factory: PipelineFactory | None = None,
                 downloader: Downloader | None = None, emotions: Mapping[str, tuple[str, ...]] | None = None) -> None:
        super().__init__()
        self.model = model  # hub id or local model folder
        self.emotion_options = dict(emotions or {})  # voice -> emotions it was trained on (--emotions)
        self._factory = pipeline_factory  # None: modelscope's own pipeline, after preflight()
        self._downloader = downloader or download_snapshot
        self.model_folder: Path | None = None
        self.sample_rate = SAMPLE_RATE_HZ
        self._voice_emotions: dict[str, tuple[str, ...]] = {}
        self._pipe: Any = None
        self._frontend: EmotionFrontend | None = None
        self._lock = threading.Lock()  # the emotion lives on the shared frontend for the length of one call

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        """The emotions this speaker really has (engine.emotions is the union over speakers)."""
        return self._voice_emotions.get(speaker, ())

    def _load_model(self) -> None:
        """Check dependencies, find the model folder, build the pipeline once, and load every voice."""
        if self._factory is None:
            preflight()
        self._check_device()
        folder = resolve_model_folder(self.model, self._downloader, self.name)
        check_pipeline_folder(folder)
        catalog = read_catalog(folder, self.emotion_options)  # the same voices and emotion rule as --engine sambert
        for index, text in enumerate(catalog.notes):
            self.note(f"folder:{index}", text)
        voice_emotions = {name: voice.emotions for name, voice in catalog.voices.items()}
        try:
            pipe = (self._factory or modelscope_pipeline)(str(folder))
        except Exception as exc:
            raise EngineUnavailableError(
                f"building ModelScope's pipeline from {folder} failed: {type(exc).__name__}: {exc}; "
                "install this engine's environment with: pip install -r requirements-sambert.txt (Python 3.10)"
            ) from exc
        frontend = install_emotion_frontend(pipe)
        self.note("batching", "one sentence per call (no real batching)")
        if frontend is None:
            self.note("emotions", "emotions unavailable: this pipeline has no ttsfrd frontend to carry them; neutral only")
            voice_emotions = dict.fromkeys(voice_emotions, (NEUTRAL,))
        else:
            voice_emotions = {v: encodable_emotions(pipe, v, e) for v, e in voice_emotions.items()}
        self._pipe, self._frontend, self.model_folder = pipe, frontend, folder
        rates = set()
        for voice in voice_emotions:  # the pipeline loads each voice on first use: do it now, not on a user's request
            rates.add(self._load_voice(voice))
            if frontend is not None and frontend.units_tagged == 0 and len(voice_emotions[voice]) > 1:
                self.note(f"emotions:{voice}", f"{voice}: the frontend marked no unit emotion_neutral, so its emotions "
                          "cannot be set; neutral only")
                voice_emotions[voice] = (NEUTRAL,)
        if len(rates) != 1:
            self._pipe = None
            raise EngineUnavailableError(f"voices in {folder} disagree on sample rate: {sorted(rates)} Hz")
        self.sample_rate = rates.pop()
        self._voice_emotions = voice_emotions
        self.speakers = tuple(voice_emotions)
        self.default_speaker = self.speakers[0]  # voices.json's first voice is the pipeline's default too
        self.emotions = tuple(dict.fromkeys(e for es in voice_emotions.values() for e in es))

    def _check_device(self) -> None:
        """EngineUnavailableError, with the fix, if the pipeline will not run on the device asked for."""
        wanted, actual = self.device, pipeline_device()
        if wanted != actual:
            fix = "CUDA_VISIBLE_DEVICES= (empty) to run it on the CPU" if wanted == "cpu" else (
                f"CUDA_VISIBLE_DEVICES={wanted.split(':')[-1]} to run it on that GPU (it then shows as cuda:0)")
            raise EngineUnavailableError(
                f"device={wanted!r} cannot be honoured: ModelScope's pipeline runs on {actual} here "
                f"(it always uses CUDA when torch sees it); start the app with {fix}"
            )

    def _load_voice(self, voice: str) -> int:
        """Synthesize one short sentence so the pipeline loads this voice now; return its sample rate."""
        try:
            return self._run(WARMUP_TEXT, voice, NEUTRAL)[1]
        except Exception as exc:
            self._pipe = None
            hint = ""
            if "weights_only" in str(exc):
                hint = ("; this torch refuses the checkpoint's pickle format: for a model folder you trust, "
                        "start with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
            raise EngineUnavailableError(
                f"loading voice {voice!r} from {self.model_folder} failed: {type(exc).__name__}: {exc}{hint}"
            ) from exc

    def _release(self) -> None:
        self._pipe = self._frontend = None

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Run each (checked) utterance through the pipeline in turn; the seed is unused (the pipeline is deterministic)."""
        if self._pipe is None:
            raise SynthesisError("the modelscope engine is not loaded; call load() first")
        spans.mark("pipeline")  # its own frontend, acoustic model and vocoder in one opaque call per sentence
        out = []
        for u in batch:
            audio, rate = self._run(u.text, u.speaker, u.emotion)
            if rate != self.sample_rate:
                raise SynthesisError(f"voice {u.speaker!r} returned {rate} Hz audio; the engine runs at {self.sample_rate} Hz")
            out.append(audio)
        return out

    def _run(self, text: str, voice: str, emotion: str) -> tuple[np.ndarray, int]:
        """One pipeline call with emotion set on the frontend; the WAV bytes decoded to float32."""
        with self._lock:
            if self._frontend is not None:
                self._frontend.emotion = emotion
            try:
                result = self._pipe(input=text, voice=voice)
            finally:
                if self._frontend is not None:
                    self._frontend.emotion = NEUTRAL
        if not isinstance(result, dict) or not isinstance(result.get(OUTPUT_WAV), (bytes, bytearray)):
            keys = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise SynthesisError(f"the pipeline returned {keys} for voice {voice!r}, not WAV bytes under {OUTPUT_WAV!r}")
        return wav_bytes_to_float32(bytes(result[OUTPUT_WAV]))
