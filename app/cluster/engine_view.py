"""The replicas' engine as the front sees it: EngineBase's declared members, copied as plain data (no ray here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from app.engines.base import EngineBase, Utterance


@dataclass(frozen=True)
class EngineInfo:
    """A snapshot of a loaded engine's declared members, small enough to send from a replica to the front."""

    name: str  # EngineBase.name
    sample_rate: int  # Hz of every waveform
    speakers: tuple[str, ...]  # display order, best first
    emotions: tuple[str, ...]  # union over speakers, neutral first
    emotions_by_speaker: tuple[tuple[str, tuple[str, ...]], ...]  # (speaker, engine.emotions_for(speaker)) pairs
    default_speaker: str
    experimental_speakers: frozenset[str]
    max_batch_size: int  # largest batch the engine computes at once
    fp16_capable: bool
    fp16_label: str
    fp32_label: str
    emotion_kind: str
    controls_in_model: frozenset[str]  # controls the replica's engine renders inside its model
    cuda_graphs_capable: bool
    cuda_graphs_supported: bool  # on the replica's device
    cuda_graphs: bool  # in force now
    cuda_graphs_detail: str  # what the graphs hold, e.g. their count and memory
    device: str  # the replica's device, e.g. "cuda:0" (each replica numbers its own GPUs from 0)
    fp16: bool  # FP16 in force now
    notes: tuple[str, ...]  # the engine's visible remarks
    loaded: bool
    gpu_self_check: dict  # EngineBase.gpu_self_check: the self-check's verdicts on the replica's device
    graphs_capture: dict | None  # EngineBase.graphs_capture: the latest capture's graph count and seconds
    onnx_parts: tuple[str, ...] = ()  # EngineBase.onnx_parts: what ONNX Runtime can run
    runtime: str = "torch"  # what runs them now on the replica
    runtime_detail: str = ""  # EngineBase.runtime_detail

    @classmethod
    def of(cls, engine: EngineBase) -> "EngineInfo":
        """Read the declared members of a loaded engine (in the replica)."""
        return cls(
            name=engine.name, sample_rate=engine.sample_rate, speakers=tuple(engine.speakers),
            emotions=tuple(engine.emotions),
            emotions_by_speaker=tuple((s, tuple(engine.emotions_for(s))) for s in engine.speakers),
            default_speaker=engine.default_speaker, experimental_speakers=frozenset(engine.experimental_speakers),
            max_batch_size=engine.max_batch_size, fp16_capable=engine.fp16_capable, fp16_label=engine.fp16_label,
            fp32_label=engine.fp32_label, emotion_kind=engine.emotion_kind, controls_in_model=engine.controls_in_model,
            cuda_graphs_capable=engine.cuda_graphs_capable, cuda_graphs_supported=engine.cuda_graphs_supported,
            cuda_graphs=engine.cuda_graphs, cuda_graphs_detail=engine.cuda_graphs_detail, device=engine.device, fp16=engine.fp16,
            notes=engine.notes, loaded=engine.loaded, gpu_self_check=engine.gpu_self_check,
            graphs_capture=engine.graphs_capture, onnx_parts=tuple(engine.onnx_parts), runtime=engine.runtime,
            runtime_detail=engine.runtime_detail,
        )


class ReplicaEngine(EngineBase):
    """EngineBase over an EngineInfo: what the UI, the comparison runner and request checks read, in the front.

    It speaks nothing itself (synthesis runs on the replicas); check(), precision and fp16_supported are
    EngineBase's own code over the replicas' values, so the front refuses bad input exactly as a replica would.
    """

    def __init__(self, info: EngineInfo) -> None:
        super().__init__()
        self.info = info
        self.update(info)

    def update(self, info: EngineInfo) -> None:
        """Take a newer snapshot (precision and notes change with live settings)."""
        self.info = info
        self.sample_rate = info.sample_rate
        self.speakers = info.speakers
        self.emotions = info.emotions
        self.default_speaker = info.default_speaker
        self.experimental_speakers = info.experimental_speakers
        self._emotions_by_speaker = dict(info.emotions_by_speaker)
        self._device = info.device
        self._fp16 = info.fp16
        self._notes = {f"replica-{i}": note for i, note in enumerate(info.notes)}

    # The class-level members EngineBase declares, read from the snapshot.
    name = property(lambda self: self.info.name)  # type: ignore[assignment]
    max_batch_size = property(lambda self: self.info.max_batch_size)  # type: ignore[assignment]
    fp16_capable = property(lambda self: self.info.fp16_capable)  # type: ignore[assignment]
    fp16_label = property(lambda self: self.info.fp16_label)  # type: ignore[assignment]
    fp32_label = property(lambda self: self.info.fp32_label)  # type: ignore[assignment]
    emotion_kind = property(lambda self: self.info.emotion_kind)  # type: ignore[assignment]
    controls_in_model = property(lambda self: self.info.controls_in_model)  # type: ignore[assignment]
    cuda_graphs_capable = property(lambda self: self.info.cuda_graphs_capable)  # type: ignore[assignment]
    cuda_graphs_supported = property(lambda self: self.info.cuda_graphs_supported)  # type: ignore[assignment]
    cuda_graphs = property(lambda self: self.info.cuda_graphs)  # type: ignore[assignment]
    cuda_graphs_detail = property(lambda self: self.info.cuda_graphs_detail)  # type: ignore[assignment]
    gpu_self_check = property(lambda self: self.info.gpu_self_check)  # type: ignore[assignment]
    graphs_capture = property(lambda self: self.info.graphs_capture)  # type: ignore[assignment]
    onnx_parts = property(lambda self: self.info.onnx_parts)  # type: ignore[assignment]
    runtime = property(lambda self: self.info.runtime)  # type: ignore[assignment]
    runtime_detail = property(lambda self: self.info.runtime_detail)  # type: ignore[assignment]

    @property
    def loaded(self) -> bool:
        return self.info.loaded

    def emotions_for(self, speaker: str) -> tuple[str, ...]:
        return self._emotions_by_speaker.get(speaker, ())

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        raise RuntimeError("the front does not synthesize: its requests go to the Ray Serve replicas")

    def _load_model(self) -> None:
        raise RuntimeError("the front loads no model: each Ray Serve replica loads its own")
