"""ModelScope's own Sambert-HifiGan pipeline behind the Engine interface: the fidelity reference.

This is the only module that imports modelscope, and only inside load(). What it relies on, as read in the sources:
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

import gc
import importlib
import importlib.util
import json
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from app.audio import wav_bytes_to_float32
from app.engines.base import NEUTRAL, Utterance, resolve_device
from app.errors import EngineUnavailableError, SynthesisError, TTSInputError

MODELSCOPE_WHEELS = "https://modelscope.oss-cn-beijing.aliyuncs.com/releases/repo.html"  # ModelScope's wheel index
INSTALL_COMMAND = (
    f'pip install "modelscope[audio-tts]==1.40.2" "kantts>=1.0.1" "ttsfrd==0.2.1" "setuptools<81" '
    f"-f {MODELSCOPE_WHEELS}"
)
SETUP_STEPS = (
    "python3.10 -m venv .venv-sambert && . .venv-sambert/bin/activate\n"
    "  pip install -r requirements-sambert.txt"
)
OUTPUT_WAV = "output_wav"  # modelscope.outputs.OutputKeys.OUTPUT_WAV
SAMPLE_RATE_HZ = 16000  # the zh-cn Sambert-HifiGan voices; the warm-up reads the real rate from the WAV header
WARMUP_TEXT = "你好。"  # one short sentence per voice makes the pipeline load that voice's weights
EMOTION_PREFIX = "emotion_"  # ttsfrd / KAN-TTS spell categories emotion_<name>
EMOTION_DICT = Path("dict") / "emo_category_dict.txt"  # per voice, under voices/<voice>/
PRECISION = "fp32 (the ModelScope pipeline runs FP32 only)"

# The emotion field of one unit: always after a "$", followed by "$" (speaker) or "}" if it is the last field.
_NEUTRAL_FIELD = re.compile(r"(?<=\$)emotion_neutral(?=[$}])")

PipelineFactory = Callable[[str], Any]  # model folder -> object called as pipe(input=text, voice=name)
Downloader = Callable[[str], str]  # hub model id -> local model folder


# --- dependencies --------------------------------------------------------------------------------------
def _installed(name: str) -> bool:
    """Whether a top-level module can be found, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _spec_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin).parent


def missing_dependencies() -> list[str]:
    """What stops the ModelScope pipeline from running in this interpreter (empty when nothing does)."""
    problems = []
    version = ".".join(map(str, sys.version_info[:3]))
    too_new = sys.version_info >= (3, 11)
    if too_new:
        problems.append(
            f"Python {version} is too new: ttsfrd has wheels only up to Python 3.10, and modelscope's "
            "sambert_hifi.py raises 'Python version needs to be <= 3.10'"
        )
    modelscope_dir = _spec_dir("modelscope")
    if modelscope_dir is None:
        problems.append("modelscope is not installed")
    elif not (modelscope_dir / "models" / "audio" / "tts" / "sambert_hifi.py").is_file():
        problems.append(f"modelscope at {modelscope_dir} has no Sambert-HifiGan model (models/audio/tts/sambert_hifi.py)")
    kantts_dir = _spec_dir("kantts")
    if kantts_dir is None:
        problems.append("kantts is not installed (it comes from ModelScope's wheel index, not PyPI)")
    elif not (kantts_dir / "models" / "sambert").is_dir():
        problems.append(f"kantts at {kantts_dir} is PyPI's empty placeholder (no kantts/models/sambert)")
    if not _installed("ttsfrd"):
        problems.append("ttsfrd is not installed (it comes from ModelScope's wheel index, not PyPI)")
    elif not too_new:
        try:
            ttsfrd = importlib.import_module("ttsfrd")
        except Exception as exc:  # a broken native build raises OSError or ImportError
            problems.append(f"ttsfrd cannot be imported: {type(exc).__name__}: {exc}")
        else:
            if not hasattr(ttsfrd, "TtsFrontendEngine"):
                problems.append("ttsfrd is PyPI's empty placeholder (no TtsFrontendEngine)")
    return problems


def preflight() -> None:
    """Raise EngineUnavailableError, with the exact fix, if this interpreter cannot run the pipeline; cheap."""
    problems = missing_dependencies()
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise EngineUnavailableError(
            f"--engine modelscope cannot run in this environment:\n{listed}\n"
            f"Fix: create a Python 3.10 environment for this engine, from the repository root:\n  {SETUP_STEPS}\n"
            f"(the ModelScope part of that file is: {INSTALL_COMMAND})\n"
            "then run: python launch.py --engine modelscope --model PATH_OR_ID   (see docs/modelscope.md)"
        )


def pipeline_device() -> str:
    """The device ModelScope's Voice will really use: cuda:$RANK whenever torch sees CUDA, else cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('RANK', 0))}"


# --- the model folder ----------------------------------------------------------------------------------
def download_command(model_id: str, folder: str) -> str:
    """The modelscope CLI line that fetches model_id into folder."""
    return f"modelscope download --model {model_id} --local_dir {folder}"


def looks_like_hub_id(model: str) -> bool:
    """Whether model reads as a hub id "owner/name" rather than a path (the rule modelscope itself applies)."""
    if os.path.isabs(model) or "\\" in model or model.count("/") != 1 or model.startswith(("~", ".")):
        return False
    owner, name = model.split("/")
    return bool(owner and name)


def download_snapshot(model_id: str) -> str:
    """Default downloader: modelscope's local cache first, then the hub."""
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not cached: fetch it
        return snapshot_download(model_id)


def check_model_folder(folder: Path) -> None:
    """Raise EngineUnavailableError unless folder is laid out as a ModelScope Sambert-HifiGan model."""
    for needed in ("configuration.json", "voices/voices.json"):
        if not (folder / needed).is_file():
            raise EngineUnavailableError(
                f"{folder} is not a ModelScope Sambert-HifiGan model folder: {needed} is missing; download one with: "
                f"{download_command(ModelScopeEngine.DEFAULT_MODEL, str(folder))}"
            )


def resolve_model_folder(model: str, downloader: Downloader) -> Path:
    """A local folder as given, or a hub id fetched (or found in the cache) by downloader; absolute."""
    path = Path(model).expanduser()
    if path.is_dir():
        folder = path
    elif looks_like_hub_id(model):
        local = f"./models/{model.split('/')[1]}"
        try:
            folder = Path(downloader(model))
        except Exception as exc:
            raise EngineUnavailableError(
                f"model {model!r} is not a local folder, not in the ModelScope cache, and could not be downloaded "
                f"({type(exc).__name__}: {exc}). On a machine that reaches the hub run:\n"
                f"  {download_command(model, local)}\n"
                f"then copy that folder here and run: python launch.py --engine modelscope --model {local}"
            ) from None
    else:
        problem = "is a file, not a model folder" if path.exists() else "does not exist"
        raise EngineUnavailableError(
            f"model folder {model!r} {problem}; download one with:\n"
            f"  {download_command(ModelScopeEngine.DEFAULT_MODEL, model)}"
        )
    check_model_folder(folder)
    return folder.resolve()


def read_emotions(voice_dir: Path) -> tuple[str, ...]:
    """A voice's emotions from dict/emo_category_dict.txt (first field of each line, emotion_ prefix dropped), neutral first."""
    path = voice_dir / EMOTION_DICT
    if not path.is_file():
        return (NEUTRAL,)
    names = [NEUTRAL]
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields:
            continue
        name = fields[0][len(EMOTION_PREFIX):] if fields[0].startswith(EMOTION_PREFIX) else fields[0]
        # emotion_none marks prosodic breaks and the placeholders are unused rows of KAN-TTS's table: not emotions.
        if name and name != "none" and not name.startswith("placeholder") and name not in names:
            names.append(name)
    return tuple(names)


def read_voices(folder: Path) -> dict[str, tuple[str, ...]]:
    """Each voice in voices/voices.json that has a folder (as modelscope loads them), in order, with its emotions."""
    listed = json.loads((folder / "voices" / "voices.json").read_text(encoding="utf-8")).get("voices", [])
    voices = {name: read_emotions(folder / "voices" / name) for name in listed if (folder / "voices" / name).is_dir()}
    if not voices:
        raise EngineUnavailableError(f"{folder}/voices/voices.json lists no voice with a folder (it lists {listed!r})")
    return voices


# --- emotion -------------------------------------------------------------------------------------------
def apply_emotion(symbols: str, emotion: str) -> tuple[str, int]:
    """Set emotion on every unit the frontend marked emotion_neutral; return the symbols and how many units carry it."""
    if emotion == NEUTRAL:
        return symbols, len(_NEUTRAL_FIELD.findall(symbols))
    return _NEUTRAL_FIELD.subn(EMOTION_PREFIX + emotion, symbols)


class EmotionFrontend:
    """Wraps ttsfrd's frontend in the pipeline's model: its symbols carry the chosen emotion; all else passes through."""

    def __init__(self, frontend: Any) -> None:
        self.frontend = frontend
        self.emotion = NEUTRAL  # set by the engine around each call
        self.units_tagged = 0  # units that carried the emotion in the last call

    def gen_tacotron_symbols(self, text: str) -> str:
        """The frontend's symbols for text, with the chosen emotion category on every pronounced unit."""
        symbols, self.units_tagged = apply_emotion(self.frontend.gen_tacotron_symbols(text), self.emotion)
        return symbols

    def __getattr__(self, name: str) -> Any:
        if name == "frontend":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.frontend, name)


def install_emotion_frontend(pipe: Any) -> EmotionFrontend | None:
    """Put an EmotionFrontend in front of the pipeline model's frontend; None if the pipeline has none to wrap."""
    model = getattr(pipe, "model", None)
    frontend = getattr(model, "frontend", None)
    if isinstance(frontend, EmotionFrontend):
        return frontend
    if frontend is None or not hasattr(frontend, "gen_tacotron_symbols"):
        return None
    model.frontend = EmotionFrontend(frontend)
    return model.frontend


def encodable_emotions(pipe: Any, voice: str, emotions: tuple[str, ...]) -> tuple[str, ...]:
    """Keep the emotions the voice's linguistic-unit table can encode; all of them if the pipeline does not expose it."""
    voices = getattr(getattr(pipe, "model", None), "voices", None)
    ling_unit = getattr(voices.get(voice), "ling_unit", None) if isinstance(voices, dict) else None
    if ling_unit is None:
        return emotions
    table = getattr(ling_unit, "_emo_category_to_id", None)  # KanTtsLinguisticUnit builds it only for emo_category
    if table is None:
        return (NEUTRAL,)
    return tuple(e for e in emotions if EMOTION_PREFIX + e in table)


# --- the engine ----------------------------------------------------------------------------------------
def restore_scipy_kaiser() -> None:
    """kantts/models/pqmf.py imports scipy.signal.kaiser, an alias SciPy 1.13 removed; point it at the same function."""
    import scipy.signal

    if not hasattr(scipy.signal, "kaiser"):
        from scipy.signal.windows import kaiser

        scipy.signal.kaiser = kaiser


def modelscope_pipeline(model_folder: str) -> Any:
    """Default factory: modelscope's text-to-speech pipeline on a local model folder (no hub call)."""
    restore_scipy_kaiser()  # numpy 2 (requirements.txt) needs SciPy >= 1.13
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    return pipeline(Tasks.text_to_speech, model=model_folder)


class ModelScopeEngine:
    """ModelScope's Sambert-HifiGan pipeline: its real speakers and emotions, one sentence per call, in FP32."""

    name = "modelscope"
    DEFAULT_MODEL = "damo/speech_sambert-hifigan_tts_zh-cn_16k"  # zhitian_emo, zhiyan_emo, zhizhe_emo, zhibei_emo
    max_batch_size = 1  # the pipeline synthesizes one sentence per call; a larger batch would only pretend
    fp16_supported = False  # modelscope's Voice builds and runs its models in FP32; nothing here recasts them
    preflight = staticmethod(preflight)

    def __init__(self, model: str = DEFAULT_MODEL, pipeline_factory: PipelineFactory | None = None,
                 downloader: Downloader | None = None) -> None:
        self.model = model  # hub id or local model folder
        self._factory = pipeline_factory  # None: modelscope's own pipeline, after preflight()
        self._downloader = downloader or download_snapshot
        self.model_folder: Path | None = None
        self.sample_rate = SAMPLE_RATE_HZ
        self.speakers: tuple[str, ...] = ()
        self.emotions: tuple[str, ...] = (NEUTRAL,)
        self.default_speaker = ""
        self.notes: tuple[str, ...] = ()  # what the UI should say about this engine's limits
        self._voice_emotions: dict[str, tuple[str, ...]] = {}
        self._pipe: Any = None
        self._frontend: EmotionFrontend | None = None
        self._device = "cpu"
        self._lock = threading.Lock()  # the emotion lives on the shared frontend for the length of one call

    @property
    def device(self) -> str:
        return self._device

    @property
    def precision(self) -> str:
        return PRECISION

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        """The emotions this speaker really has (engine.emotions is the union over speakers)."""
        return self._voice_emotions.get(speaker, ())

    def load(self, device: str = "auto", fp16: bool = True) -> None:
        """Check dependencies, find the model folder, build the pipeline once, and warm up every voice."""
        if self._factory is None:
            preflight()
        actual = self._check_device(device)
        folder = resolve_model_folder(self.model, self._downloader)
        voice_emotions = read_voices(folder)
        try:
            pipe = (self._factory or modelscope_pipeline)(str(folder))
        except Exception as exc:
            raise EngineUnavailableError(
                f"building ModelScope's pipeline from {folder} failed: {type(exc).__name__}: {exc}; "
                "install this engine's environment with: pip install -r requirements-sambert.txt (Python 3.10)"
            ) from exc
        frontend = install_emotion_frontend(pipe)
        notes = [f"{PRECISION}; one sentence per call (no real batching)"]
        if frontend is None:
            notes.append("emotions unavailable: this pipeline has no ttsfrd frontend to carry them; neutral only")
            voice_emotions = dict.fromkeys(voice_emotions, (NEUTRAL,))
        else:
            voice_emotions = {v: encodable_emotions(pipe, v, e) for v, e in voice_emotions.items()}
        self._pipe, self._frontend, self._device, self.model_folder = pipe, frontend, actual, folder
        rates = set()
        for voice in voice_emotions:  # the pipeline loads each voice on first use: do it now, not on a user's request
            rates.add(self._warm_up(voice))
            if frontend is not None and frontend.units_tagged == 0 and len(voice_emotions[voice]) > 1:
                notes.append(f"{voice}: the frontend marked no unit emotion_neutral, so its emotions cannot be set; "
                             "neutral only")
                voice_emotions[voice] = (NEUTRAL,)
        if len(rates) != 1:
            self._pipe = None
            raise EngineUnavailableError(f"voices in {folder} disagree on sample rate: {sorted(rates)} Hz")
        self.sample_rate = rates.pop()
        self._voice_emotions = voice_emotions
        self.speakers = tuple(voice_emotions)
        self.default_speaker = self.speakers[0]  # voices.json's first voice is the pipeline's default too
        self.emotions = tuple(dict.fromkeys(e for es in voice_emotions.values() for e in es))
        self.notes = tuple(notes)
        if fp16:
            warnings.warn(f"FP16 requested, but {PRECISION}; using FP32", RuntimeWarning, stacklevel=2)

    @staticmethod
    def _check_device(device: str) -> str:
        """The device the pipeline will use; EngineUnavailableError if that is not the one asked for."""
        wanted, actual = resolve_device(device), pipeline_device()
        if wanted != actual:
            fix = "CUDA_VISIBLE_DEVICES= (empty) to run it on the CPU" if wanted == "cpu" else (
                f"CUDA_VISIBLE_DEVICES={wanted.split(':')[-1]} to run it on that GPU (it then shows as cuda:0)")
            raise EngineUnavailableError(
                f"device={device!r} cannot be honoured: ModelScope's pipeline runs on {actual} here "
                f"(it always uses CUDA when torch sees it); start the app with {fix}"
            )
        return actual

    def _warm_up(self, voice: str) -> int:
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
                f"warming up voice {voice!r} from {self.model_folder} failed: {type(exc).__name__}: {exc}{hint}"
            ) from exc

    def set_precision(self, fp16: bool) -> str:
        """FP32 is the only precision: a request for FP16 warns and changes nothing."""
        if fp16:
            warnings.warn(f"FP16 requested, but {PRECISION}; using FP32", RuntimeWarning, stacklevel=2)
        return self.precision

    def check(self, speaker: str, emotion: str) -> None:
        """Raise TTSInputError naming the value if speaker is unknown or does not have emotion."""
        if speaker not in self._voice_emotions:
            raise TTSInputError(f"unknown speaker {speaker!r}; choose one of: {', '.join(self.speakers)}")
        if emotion not in self._voice_emotions[speaker]:
            raise TTSInputError(
                f"speaker {speaker!r} has no emotion {emotion!r}; it has: {', '.join(self._voice_emotions[speaker])}")

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Run each utterance through the pipeline in turn (the seed is unused: the pipeline is deterministic)."""
        if self._pipe is None:
            raise SynthesisError("the modelscope engine is not loaded; call load() first")
        for u in batch:  # every item is checked before any runs
            self.check(u.speaker, u.emotion)
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

    def speakable(self, text: str) -> bool:
        """Whether the sentence has a character ttsfrd can read (Chinese, letters or digits)."""
        return any(ch.isalnum() for ch in text)

    def unload(self) -> None:
        """Drop the pipeline and free its device memory."""
        self._pipe = self._frontend = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
