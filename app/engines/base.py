"""The one engine contract: every member the service, UI, CLI and profiler use, declared here with defaults.

An engine is loaded once and then turns a batch of utterances into one float32 waveform each. `EngineBase`
implements what is the same for every engine (device choice, precision and its FP16 fallback, the emotion rule,
unload, the GPU self-check, the runtime switch); an engine class fills in its model through the `_load_model`, `_cast`,
`_release` hooks and `synthesize`, for the self-check `_check_decode` and `_check_vocode`, and for ONNX Runtime
`_use_onnx` and `_drop_onnx`.

The GPU self-check (app/engines/self_check.py holds its comparisons and tolerances): right after graphs are captured
(start-up, a toggle, a precision change, a recapture) the self-check items are decoded by the captured replay and by
the dynamic loop; right after FP16 is put in force, each module of the half table is run against FP32 on them. A check
that fails turns graphs off, or puts that module back to FP32, with a note. It never runs on a request's path.
"""
from __future__ import annotations

import gc
import logging
import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar, Sequence

import numpy as np

from app.engines import self_check as checks
from app.engines.self_check import Decoded, Verdict
from app.errors import TTSInputError
from app.settings import RUNTIMES

log = logging.getLogger(__name__)
NEUTRAL = "neutral"
WARMUP_TEXT = "你好，欢迎使用语音合成。"  # short, covers tones and punctuation: the service warms every voice with it

# What an engine's emotions are, for the UI to say so honestly.
EMOTIONS_TRAINED = "trained"  # the model was trained with emotion labels (Sambert's emotional voices)
EMOTIONS_RULES = "rendered by prosody rules"  # rendered after the model by pitch/tempo/loudness rules
EMOTIONS_NONE = "none"  # neutral only
EMOTION_KIND_INFO = {  # what the UI says about an engine's emotions
    EMOTIONS_TRAINED: "emotions: trained (the model was trained on them)",
    EMOTIONS_RULES: "emotions: rendered by prosody rules (pitch, range, tempo, loudness after the model)",
    EMOTIONS_NONE: "this engine has a single emotion: neutral",
}


@dataclass(frozen=True)
class Utterance:
    """One batch item: a single normalised sentence and how to voice it."""

    text: str  # one sentence, already normalised by app.text
    speaker: str  # one of engine.speakers
    emotion: str = NEUTRAL  # one of engine.emotions_for(speaker)
    seed: int = 0  # seeds this item's own random generator, so its audio never depends on its batch
    speed: float = 1.0  # tempo factor: 2.0 speaks twice as fast (app.settings.SPEED_RANGE)
    pitch: float = 0.0  # semitones up (+) or down (-) (app.settings.PITCH_RANGE_ST)
    volume: float = 0.0  # loudness change in dB (app.settings.VOLUME_RANGE_DB)

    @property
    def default_controls(self) -> bool:
        """Whether speed, pitch and volume are all at their defaults."""
        return self.speed == 1.0 and self.pitch == 0.0 and self.volume == 0.0


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda:0" when CUDA is visible, else "cpu"; refuse an explicit CUDA request without CUDA."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use --device cpu or auto")
    if device == "cuda":
        return "cuda:0"
    return device


class EngineBase:
    """Base of every engine. Engines trust their inputs: the service calls `check()` before anything is queued."""

    name: ClassVar[str] = "engine"  # short name used on the command line (embedded, sambert, modelscope)
    max_batch_size: ClassVar[int] = 1  # largest batch the engine really computes at once (1 = no real batching)
    fp16_capable: ClassVar[bool] = True  # whether the model can run FP16 at all (on CUDA)
    fp16_label: ClassVar[str] = "fp16"  # how FP16 is described when in force, e.g. "fp16 (vocoder fp32)"
    fp32_label: ClassVar[str] = "fp32"  # how FP32 is described when in force
    emotion_kind: ClassVar[str] = EMOTIONS_NONE  # EMOTIONS_TRAINED, EMOTIONS_RULES or EMOTIONS_NONE
    # Which of {"speed", "pitch", "volume"} the engine renders inside its model; the service renders the
    # others (and, for EMOTIONS_RULES engines, the emotion) on the waveform after the batch (app.prosody).
    controls_in_model: ClassVar[frozenset[str]] = frozenset()
    cuda_graphs_capable: ClassVar[bool] = False  # whether the engine has a static decoder CUDA graphs can capture
    # The modules of the engine's half-precision table (self.half_precision), the mel-making one first and the vocoder
    # last: the self-check judges the first by its mels and frame counts, the last by its waveforms.
    half_modules: ClassVar[tuple[str, ...]] = ()
    # What ONNX Runtime can run instead of torch (set_runtime): the non-autoregressive parts, e.g. ("vocoder",); the
    # autoregressive decoders stay in torch, where CUDA graphs are their fast path.
    onnx_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.sample_rate: int = 16000  # Hz of every waveform synthesize() returns
        self.speakers: tuple[str, ...] = ()  # display order: best voices first
        self.emotions: tuple[str, ...] = (NEUTRAL,)  # union over speakers, neutral first
        self.default_speaker: str = ""
        self.experimental_speakers: frozenset[str] = frozenset()  # voices the UI labels as unreliable
        self._device = "cpu"
        self._fp16 = False
        self._cuda_graphs = False
        self._notes: dict[str, str] = {}  # topic -> a visible remark (why FP16 is off, what a voice lacks)
        self.half_precision: dict[str, str] = {}  # module -> what FP16-on runs it in (fp16, bf16, fp32), as asked
        self._half_fallback: dict[str, str] = {}  # module -> why the self-check runs it in FP32 despite the table
        self._verdicts: dict[str, Verdict] = {}  # "graphs", "fp16 MODULE" -> the latest self-check verdict
        self._capture: dict | None = None  # the latest capture: graph count, seconds (None: none in force)
        self._runtime = "torch"  # what runs onnx_parts now: torch or onnxruntime
        self._runtime_detail = ""  # e.g. "vocoder: embedded-melgan-fp32 on CPU, exported in 5.2 s"
        self.onnx_dir: str | None = None  # where exported parts are cached (None: the engine's own default)

    # --- what callers read -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """"cpu", "cuda:0", ... once loaded."""
        return self._device

    @property
    def fp16_supported(self) -> bool:
        """Whether FP16 can really run on the loaded device."""
        return self.fp16_capable and self._device.startswith("cuda")

    @property
    def fp16(self) -> bool:
        """Whether FP16 is in force now."""
        return self._fp16

    @property
    def precision(self) -> str:
        """What is in force, e.g. "fp16 (vocoder fp32)" or "fp32"."""
        return self.fp16_label if self._fp16 else self.fp32_label

    @property
    def cuda_graphs_supported(self) -> bool:
        """Whether CUDA graphs can really be captured on the loaded device."""
        if not self.cuda_graphs_capable:
            return False
        from app.engines import cuda_graphs  # imports torch: only engines that can capture get here

        return cuda_graphs.capture_possible(self._device)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the decoder replays captured CUDA graphs now (False: the dynamic loop)."""
        return self._cuda_graphs

    @property
    def cuda_graphs_detail(self) -> str:
        """What the graphs hold, e.g. "42 CUDA graphs captured, 180 MiB" ("" when off)."""
        return self._graphs_description() if self._cuda_graphs else ""

    @property
    def runtime(self) -> str:
        """What runs the onnx_parts now: "torch" or "onnxruntime" (a failed switch leaves torch, with a note)."""
        return self._runtime

    @property
    def runtime_detail(self) -> str:
        """What ONNX Runtime runs and on which provider ("" under torch)."""
        return self._runtime_detail

    def half_table(self, fp16: bool) -> dict[str, str]:
        """What runs per module: with fp16 the half table less the modules the self-check put back to FP32; else FP32."""
        return {m: "fp32" if not fp16 or m in self._half_fallback else p for m, p in self.half_precision.items()}

    @property
    def gpu_self_check(self) -> dict:
        """The self-check's verdicts as /health shows them: {"graphs": entry, "fp16": {module: entry}}; each entry has
        status (passed, failed, skipped), difference, tolerance, detail (what differed, or why skipped) and seconds."""
        graphs = self._verdicts.get("graphs") or checks.skipped(self._graphs_unchecked_why())
        fp16 = {m: (self._verdicts.get(f"fp16 {m}") or checks.skipped(self._half_unchecked_why())).as_dict()
                for m in self.half_modules}
        return {"graphs": graphs.as_dict(), "fp16": fp16}

    @property
    def graphs_capture(self) -> dict | None:
        """The latest capture: {"graphs": count, "capture_s": warm-up and capture time, "self_check_s": the replay
        check's time}; None when no graphs were captured since they were last turned off."""
        return self._capture

    def _graphs_unchecked_why(self) -> str:
        if not self.cuda_graphs_capable:
            return f"CUDA graphs are not available for the {self.name} engine"
        if not self.cuda_graphs_supported:
            return f"CUDA graphs need CUDA; the dynamic loop decodes on {self._device}"
        return "CUDA graphs are off" if self.loaded else "no model loaded"

    def _half_unchecked_why(self) -> str:
        if not self.fp16_supported:
            return f"FP16 needs CUDA; fp32 on {self._device}"
        return "FP16 is off: fp32 in force" if self.loaded else "no model loaded"

    @property
    def notes(self) -> tuple[str, ...]:
        """Remarks the UI and /health show about this engine's limits, in the order they arose."""
        return tuple(self._notes.values())

    def note(self, topic: str, text: str | None) -> None:
        """Set (or with None clear) the visible remark on topic."""
        if text is None:
            self._notes.pop(topic, None)
        else:
            self._notes[topic] = text

    @property
    def loaded(self) -> bool:
        """Whether load() has put a model in memory."""
        return False

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        """The emotions this speaker has (engine.emotions is the union over speakers)."""
        return self.emotions

    def check(self, speaker: str, emotion: str) -> None:
        """Refuse, naming the values, an unknown speaker or an emotion this speaker does not have."""
        if speaker not in self.speakers:
            raise TTSInputError(f"unknown speaker {speaker!r}; choose one of: {', '.join(self.speakers)}")
        if emotion not in self.emotions:
            raise TTSInputError(
                f"unknown emotion {emotion!r} for engine {self.name}; choose one of: {', '.join(self.emotions)}")
        offered = self.emotions_for(speaker)
        if emotion not in offered:
            raise TTSInputError(f"speaker {speaker!r} has no emotion {emotion!r}; choose one of: {', '.join(offered)}")

    # --- lifecycle ---------------------------------------------------------------------------------
    def load(self, device: str = "auto", fp16: bool = True) -> None:
        """Load weights onto device ("auto" picks CUDA when present), then set the precision."""
        self._device = resolve_device(device)
        self._load_model()
        self.set_precision(fp16)

    def set_precision(self, fp16: bool) -> str:
        """Recast the resident model in place; FP16 where it cannot run stays FP32 with a warning and a note."""
        if fp16 and not self.fp16_supported:
            why = f"FP16 needs CUDA; running FP32 on {self._device}" if self.fp16_capable else (
                f"FP16 is not available for the {self.name} engine; running {self.fp32_label}")
            self.note("precision", why)
            warnings.warn(why, RuntimeWarning, stacklevel=2)
            fp16 = False
        else:
            self.note("precision", None)
        graphs, runtime = self._cuda_graphs, self._runtime
        if graphs:  # the graphs hold the old dtype's buffers: drop them first (less peak memory), capture again after
            self._release_graphs()
        if runtime != "torch":  # the exported files are per dtype, and the self-check must judge torch's half modules
            self.set_runtime("torch")
        self._half_fallback = {}
        self._verdicts = {k: v for k, v in self._verdicts.items() if not k.startswith("fp16 ")}
        self.note("fp16_self_check", None)
        if self.loaded and fp16:
            self._check_half()  # casts: FP32 for the reference, then the half table, then any failing module back
        elif self.loaded:
            self._cast(False)
        self._fp16 = fp16
        if graphs:
            self.set_cuda_graphs(True)
        if runtime != "torch":
            self.set_runtime(runtime)  # the parts at their new dtype (exported once per dtype)
        return self.precision

    def set_runtime(self, runtime: str) -> str:
        """Run the onnx_parts on ONNX Runtime ("onnxruntime") or torch ("torch"); returns what is in force.

        The first switch exports each part (seconds, once per weights and dtype; a progress line is logged). Without
        the packages, without a provider for the device, or when an export or its check fails, torch stays in force
        and a note says why: the app keeps answering either way."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r} is not one of {', '.join(RUNTIMES)}")
        self._drop_onnx()
        self._runtime, self._runtime_detail = "torch", ""
        self.note("runtime", None)
        if runtime == "torch" or not self.loaded:
            return self._runtime
        if not self.onnx_parts:
            self.note("runtime", f"ONNX Runtime is not available for the {self.name} engine; torch runs it")
            return self._runtime
        try:
            detail = self._use_onnx(log.info)
        except Exception as exc:  # a missing package, an export that fails, a file that does not match torch
            self._drop_onnx()
            why = f"ONNX Runtime not in force ({type(exc).__name__}: {str(exc)[:200]}); torch runs the {', '.join(self.onnx_parts)}"
            log.warning(why)
            self.note("runtime", why)
            return self._runtime
        self._runtime, self._runtime_detail = "onnxruntime", detail
        return self._runtime

    def set_cuda_graphs(self, on: bool) -> bool:
        """Capture the static decoder's graphs for every bucket now, or drop them; returns what is in force.

        Without CUDA, or when capture fails (e.g. out of memory at warm-up), the dynamic loop stays in force and a
        note says why: the app keeps answering either way.
        """
        if on and not self.cuda_graphs_supported:
            self.note("cuda_graphs", f"CUDA graphs need CUDA; decoding with the dynamic loop on {self._device}"
                      if self.cuda_graphs_capable else f"CUDA graphs are not available for the {self.name} engine")
            on = False
        else:
            self.note("cuda_graphs", None)
        self._release_graphs()
        self._cuda_graphs = False
        self._verdicts.pop("graphs", None)
        self._capture = None
        if on and self.loaded:
            t0 = time.monotonic()
            try:
                self._capture_graphs()
            except Exception as exc:  # capture must never take the app down: fall back, say so
                self._release_graphs()
                _free_cuda_cache()
                why = f"CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); decoding with the dynamic loop"
                log.warning(why)
                self.note("cuda_graphs", why)
                self._verdicts["graphs"] = checks.failed(f"capture raised {type(exc).__name__}: {str(exc)[:160]}")
                return False
            sets = self._graph_sets()
            self._capture = {"graphs": sum(len(g) for g in sets), "capture_s": round(time.monotonic() - t0, 3)}
            self._cuda_graphs = True
            verdict = self._verdicts["graphs"] = self._check_graphs()
            self._capture["self_check_s"] = round(verdict.seconds, 3)
            if verdict.failed:  # wrong audio is worse than slow audio: the dynamic loop decodes from now on
                self._release_graphs()
                self._cuda_graphs = False
                _free_cuda_cache()
                why = f"CUDA graphs failed their self-check ({verdict.detail}); decoding with the dynamic loop"
                log.warning(why)
                self.note("cuda_graphs", why)
                return False
        self._cuda_graphs = on and self.loaded
        return self._cuda_graphs

    # --- the GPU self-check ------------------------------------------------------------------------
    def _mel_precision(self) -> str:
        """The precision the mel-making module runs in now (its graphs tolerance is chosen by it)."""
        table = self.half_table(self._fp16)
        return table.get(self.half_modules[0], "fp32") if self.half_modules else "fp32"

    def _check_graphs(self) -> Verdict:
        """The captured replay against the dynamic loop on the self-check items (same seeds, same precision)."""
        t0 = time.monotonic()
        try:
            replay = self._check_decode(dynamic=False)
            dynamic = self._check_decode(dynamic=True)
            verdict = checks.compare_replay(replay, dynamic, self._mel_precision())
        except Exception as exc:  # a replay that raises is a failed check, never a dead worker
            log.exception("CUDA graphs self-check raised")
            verdict = checks.failed(f"the check raised {type(exc).__name__}: {str(exc)[:160]}")
        return replace(verdict, seconds=time.monotonic() - t0)

    def _check_half(self) -> None:
        """FP16 on: each module the half table runs in half precision against FP32 on the self-check items, with the
        dynamic loop. A module whose output is non-finite or too far off (self_check's tolerances) runs FP32, with a
        note; the others keep the table's precision."""
        if not self.half_modules:  # nothing to judge per module: FP16 as the engine casts it
            self._cast(True)
            return
        wanted = self.half_table(True)
        mel_module = self.half_modules[0]
        t0 = time.monotonic()
        self._cast(False)
        try:
            reference = self._check_decode(dynamic=True)
            reference_waves = self._check_vocode([d.mel for d in reference])
        except Exception as exc:
            log.exception("FP16 self-check: the FP32 reference raised")
            reference, why = None, f"the fp32 reference raised {type(exc).__name__}: {str(exc)[:160]}"
        reference_s = time.monotonic() - t0
        self._cast(True)
        for module in self.half_modules:
            if wanted[module] == "fp32":
                self._verdicts[f"fp16 {module}"] = checks.skipped(f"the half table runs {module} in fp32")
                continue
            t1 = time.monotonic()
            try:
                if reference is None:
                    verdict = checks.failed(why)
                elif module == mel_module:
                    verdict = checks.compare_half_mels(wanted[module], self._check_decode(dynamic=True), reference)
                else:
                    verdict = checks.compare_half_waves(wanted[module], self._check_vocode([d.mel for d in reference]),
                                                        reference_waves)
            except Exception as exc:
                log.exception("FP16 self-check of %s raised", module)
                verdict = checks.failed(f"{wanted[module]} raised {type(exc).__name__}: {str(exc)[:160]}")
            verdict = self._verdicts[f"fp16 {module}"] = replace(verdict, seconds=time.monotonic() - t1 + reference_s)
            reference_s = 0.0  # the FP32 reference's time counts once, with the first module checked
            if verdict.failed:
                self._half_fallback[module] = verdict.detail
        if self._half_fallback:
            self._cast(True)  # the failing modules back to FP32
            why = "; ".join(f"{m} runs fp32: {wanted[m]} failed its self-check ({d})" for m, d in self._half_fallback.items())
            log.warning("FP16 self-check: %s", why)
            self.note("fp16_self_check", f"FP16 self-check: {why}")

    def unload(self) -> None:
        """Free the model and its device memory."""
        self._release_graphs()
        self._cuda_graphs = False
        self._drop_onnx()
        self._runtime, self._runtime_detail = "torch", ""
        self._release()
        _free_cuda_cache()

    # --- what an engine implements -----------------------------------------------------------------
    def speakable(self, text: str) -> bool:
        """Whether a normalised sentence has anything this engine can pronounce."""
        return any(ch.isalnum() for ch in text)

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Run one batch; return one 1-D float32 waveform in [-1, 1] per utterance, in order."""
        raise NotImplementedError

    def _load_model(self) -> None:
        """Read the weights onto self.device (self.device is already resolved)."""
        raise NotImplementedError

    def _cast(self, fp16: bool) -> None:
        """Cast the resident model to FP16 or FP32 in place (only called when FP16 can really run)."""

    def _release(self) -> None:
        """Drop the model's references so its memory can be freed."""

    def _capture_graphs(self) -> None:
        """Build the static decoder and capture its graphs (only called when cuda_graphs_supported); may raise."""
        raise NotImplementedError

    def _release_graphs(self) -> None:
        """Drop the static decoder and its graphs (the dynamic loop decodes again)."""

    def _use_onnx(self, progress) -> str:
        """Export (once) and load every onnx_part on ONNX Runtime and use them from the next batch; may raise.
        progress gets a line before a long export. Returns one line on what runs where."""
        raise NotImplementedError

    def _drop_onnx(self) -> None:
        """Drop the ONNX Runtime sessions: torch runs every part again."""

    def _graphs_description(self) -> str:
        """One line on the captured graphs: how many, how much memory."""
        return ""

    def _graph_sets(self) -> list:
        """The cuda_graphs.GraphSets in force (one per static decoder), for the capture's count."""
        return []

    def _check_decode(self, dynamic: bool) -> list[Decoded]:
        """The self-check items (the warm-up sentence in a few voices, fixed seeds) through the acoustic model at the
        precision in force: by the captured replay (dynamic=False; raise if the static decoder did not take them) or
        by the dynamic loop. One Decoded per item, mel (frames, bands) in FP32."""
        raise NotImplementedError

    def _check_vocode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """The vocoder at the precision in force on (frames, bands) FP32 mels: one waveform per mel."""
        raise NotImplementedError


def _free_cuda_cache() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
