"""UI event handlers: plain functions over the service and the monitor, returning data and figures."""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Iterator

import gradio as gr
import numpy as np
import pandas as pd

from app.audio import SENTENCE_PAUSE_S, float_to_int16, silence
from app.engines.base import EMOTION_KIND_INFO, EMOTIONS_NONE, EngineBase
from app.engines.self_check import failures
from app.errors import QueueFullError, SynthesisError, TTSInputError
from app.service import TTSService
from app.timings import stage_share
from app.web.roles import Access, caller_key, operator_only
from profiling import plots
from profiling.capacity import check_slo
from profiling.compare import make_grid, run_grid
from profiling.loadgen import load_workload
from profiling.monitor import Monitor
from profiling.trace import TraceBusyError, TraceRecorder

PANEL_WINDOW_S = 120.0  # the live plots show the last two minutes


def ffmpeg_available() -> bool:
    """Gradio encodes streamed audio with ffmpeg; without it the page answers once, whole."""
    return shutil.which("ffmpeg") is not None


def speaker_choices(engine: EngineBase) -> list[tuple[str, str]]:
    """(label, value) pairs: best voices first, poor ones labelled experimental."""
    return [(f"{s} (experimental)" if s in engine.experimental_speakers else s, s) for s in engine.speakers]


def emotion_choices(engine: EngineBase, speaker: str) -> list[str]:
    """The emotions this speaker really has."""
    return list(engine.emotions_for(speaker)) or list(engine.emotions)


def emotion_info(engine: EngineBase, speaker: str) -> str:
    """Says which kind of emotion this voice has: trained, rendered by prosody rules, or none."""
    kind = engine.emotion_kind if len(emotion_choices(engine, speaker)) > 1 else EMOTIONS_NONE
    return EMOTION_KIND_INFO[kind]


class Handlers:
    """Everything the page does, as functions the UI wires to components."""

    def __init__(self, service: TTSService, monitor: Monitor, workload: list[str] | None = None, streaming: bool = False,
                 access: Access | None = None) -> None:
        self.service = service
        self.monitor = monitor
        self.streaming = streaming  # stream sentence by sentence (the page's audio player needs ffmpeg for it)
        self.workload = workload or load_workload()
        self.access = access or Access()  # who may tune the server (@operator_only handlers check it); default: local
        self.tracer = TraceRecorder(service)  # one recording at a time, over the next batches

    # --- speech ------------------------------------------------------------------------------------
    def speak(self, text: str, speaker: str, emotion: str, speed: float = 1.0, pitch: float = 0.0,
              volume: float = 0.0, request: gr.Request = None) -> Iterator[tuple[tuple[int, np.ndarray] | None, str]]:
        """Stream sentence by sentence (ffmpeg present) or answer once; yields (audio, timing line)."""
        controls = dict(speed=speed, pitch=pitch, volume=volume, caller=caller_key(request))
        try:
            if not self.streaming:
                result = self.service.submit(text, speaker, emotion, **controls)
                yield (result.sample_rate, float_to_int16(result.audio)), result.timings.summary()
                return
            audio_s, rate = 0.0, None
            for piece in self.service.stream(text, speaker, emotion, **controls):
                rate = piece.sample_rate
                chunk = piece.audio if piece.index == 0 else np.concatenate([silence(SENTENCE_PAUSE_S, rate), piece.audio])
                audio_s += len(chunk) / rate
                first = f"first audio after {piece.elapsed_s:.2f} s; " if piece.index == 0 else ""
                line = f"sentence {piece.index + 1}/{piece.total} ready at {piece.elapsed_s:.2f} s; {first}{audio_s:.1f} s of audio so far"
                yield (rate, float_to_int16(chunk)), line
        except (TTSInputError, QueueFullError, SynthesisError) as exc:
            raise gr.Error(str(exc)) from None

    def synthesize(self, text: str, speaker: str, emotion: str, speed: float = 1.0, pitch: float = 0.0,
                   volume: float = 0.0, request: gr.Request = None) -> tuple[int, np.ndarray]:
        """The /synthesize API: whole text -> one WAV; speed, pitch and volume are optional."""
        try:
            result = self.service.submit(text, speaker, emotion, speed=speed, pitch=pitch, volume=volume, caller=caller_key(request))
        except (TTSInputError, QueueFullError, SynthesisError) as exc:
            raise gr.Error(str(exc)) from None
        return result.sample_rate, float_to_int16(result.audio)

    def emotions(self, speaker: str, current: str):
        """Emotion dropdown for the chosen speaker, keeping the current emotion when that speaker has it."""
        engine = self.service.engine
        choices = emotion_choices(engine, speaker)
        return gr.Dropdown(choices=choices, value=current if current in choices else choices[0], interactive=len(choices) > 1,
                           info=emotion_info(engine, speaker))

    # --- side panel --------------------------------------------------------------------------------
    def batches_frame(self) -> pd.DataFrame:
        log = self.service.batch_log
        return pd.DataFrame({"t": [b.t for b in log], "size": [b.size for b in log], "ok": [b.ok for b in log]})

    def stages_frame(self) -> pd.DataFrame:
        """One row per (recent engine call, stage): the stage chart's data, OTHER included so a bar is the call's wall."""
        rows, labels = [], set()
        for record in self.service.span_log[-plots.STAGE_BATCHES:]:
            label = f"#{record.batch_id} ({record.size})" + ("" if record.ok else " failed")
            while label in labels:  # replicas number their batches each from 0
                label += "'"
            labels.add(label)
            for stage, seconds in record.totals().items():
                steps = sum(s.steps for s in record.spans if s.stage == stage)
                frames = sum(s.frames for s in record.spans if s.stage == stage)
                rows.append((label, stage, seconds, record.size, steps, frames))
        return pd.DataFrame(rows, columns=["batch", "stage", "seconds", "size", "steps", "frames"])

    def panel(self):
        """The live figures and a one-line status (called by the timer, never queued)."""
        samples = self.monitor.frame(since=time.time() - PANEL_WINDOW_S)
        batches = self.batches_frame()
        if len(batches):
            batches = batches[batches["t"] >= time.time() - PANEL_WINDOW_S]
        recent = [t for t in self.service.request_log if t.finished_at >= time.time() - PANEL_WINDOW_S]
        return (plots.memory_figure(samples), plots.utilization_figure(samples), plots.batches_figure(batches, samples),
                plots.stage_figure(self.stages_frame()), plots.stage_share_figure(stage_share(recent)), self.status())

    def status(self) -> str:
        h = self.service.health()
        s = h["settings"]
        line = (
            f"**In force:** {h['engine']} on `{h['device']}`, {h['precision']}; max batch {s['max_batch_size']}, "
            f"max wait {s['max_wait_ms']:.0f} ms, cache clearing {'on' if s['clear_cache'] else 'off'}, "
            f"CUDA graphs {'on (' + h['cuda_graphs_detail'] + ')' if h['cuda_graphs'] else 'off'}, "
            f"vocoder on {'ONNX Runtime (' + h['runtime_detail'] + ')' if h['runtime'] == 'onnxruntime' else 'torch'} · "
            f"queue {h['queue_depth']}/{h['queue_capacity']} · {h['batches_run']} batches, {h['items_failed']} failed"
        )
        failed = failures(h.get("gpu_self_check") or {})
        if failed:  # what the self-check turned off, in the line itself: the user hears the fallback, not garbage
            line += f" · **GPU self-check failed:** {', '.join(failed)} (turned off; the notes say what differed)"
        replicas = [r["summary"] for r in h.get("replicas", ())]  # Ray Serve front: one line per replica
        notes = [n for n in (*self.service.engine.notes, self.monitor.note) if n]
        return line + "".join(f"  \n{r}" for r in replicas) + "".join(f"  \n_{n}_" for n in notes)

    @operator_only
    def apply_settings(self, fp16: bool, max_batch_size: float, max_wait_ms: float, clear_cache: bool, cuda_graphs: bool = True,
                       runtime: str | None = None) -> tuple[str, bool, bool, str]:
        """Queue a settings change; it takes effect between batches (a first switch to ONNX Runtime exports the vocoder:
        seconds). Returns the status line and what is in force for the switches the engine may not honour (FP16, CUDA
        graphs, runtime), so a switch that fell back shows what runs; the status line's note says why."""
        try:
            applied = self.service.apply_settings(fp16=bool(fp16), max_batch_size=int(max_batch_size),
                                                  max_wait_ms=float(max_wait_ms), clear_cache=bool(clear_cache),
                                                  cuda_graphs=bool(cuda_graphs), runtime=runtime or self.service.settings.runtime)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return self.status(), applied.fp16, applied.cuda_graphs, applied.runtime

    @operator_only
    def compare(self, fp16: list[str], batch: list[str], clear: list[str], concurrency: float, repeats: float, n_texts: float,
                graphs: list[str] | None = None, find_capacity: bool = False, slo_p95_s: float | None = None,
                runtime: list[str] | None = None, progress=gr.Progress()):
        """Run the grid on the resident service (and each setting's capacity under a p95 target if asked);
        return the table, five charts and a CSV file."""
        graphs = graphs if graphs is not None else ["off"]
        runtime = runtime if runtime is not None else ["torch"]
        if not (fp16 and batch and clear and graphs and runtime):
            raise gr.Error("pick at least one value in each of FP16, batch size, cache clearing, CUDA graphs and runtime")
        try:
            slo = check_slo(slo_p95_s) if find_capacity else None
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        points = make_grid([v == "on" for v in fp16], sorted(int(b) for b in batch), [v == "on" for v in clear],
                           [v == "on" for v in graphs], list(runtime))
        texts = self.workload[: int(n_texts)]

        def report(i: int, n: int, label: str) -> None:
            progress((i, n), desc=f"setting {min(i + 1, n)}/{n}: {label}")

        df = run_grid(self.service, self.monitor, points, texts, int(concurrency), int(repeats), report, slo_p95_s=slo)
        path = tempfile.NamedTemporaryFile(prefix="tts-compare-", suffix=".csv", delete=False).name
        df.to_csv(path, index=False)
        figs = plots.comparison_figures(df)
        shown = df.round(3)
        return shown, figs["latency"], figs["throughput"], figs["memory"], figs["stages"], figs["capacity"], path

    @operator_only
    def record_trace(self, batches: float = 5):
        """Trace the next N batches with torch.profiler; return the summary, the top operators by stage and the file."""
        try:
            result = self.tracer.record(batches)
        except (ValueError, TraceBusyError) as exc:
            raise gr.Error(str(exc)) from None
        if not result.records:
            raise gr.Error(result.summary())
        table = result.ops.round({"self_ms": 2, "share_of_stage": 3})
        if not (table["kind"] == "GPU kernel").any():  # a CPU trace: every row is a host op
            table = table.drop(columns="kind")
        return result.summary(), table, result.path
