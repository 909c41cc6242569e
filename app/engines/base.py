"""The engine interface every text-to-speech backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

NEUTRAL = "neutral"


@dataclass(frozen=True)
class Utterance:
    """One batch item: a single normalised sentence and how to voice it."""

    text: str  # one sentence, already normalised by app.text
    speaker: str  # one of engine.speakers
    emotion: str = NEUTRAL  # one of engine.emotions
    seed: int = 0  # seeds this item's own random generator, so its audio never depends on its batch


@runtime_checkable
class Engine(Protocol):
    """A loaded-once model that turns a batch of utterances into one float32 waveform each.

    Engines trust their inputs: the service validates speaker, emotion and text before they arrive.
    """

    name: str  # short engine name used on the command line (embedded, sambert, modelscope)
    sample_rate: int  # Hz of every waveform synthesize() returns
    speakers: tuple[str, ...]  # display order: best voices first
    emotions: tuple[str, ...]  # at least (NEUTRAL,)
    default_speaker: str
    max_batch_size: int  # largest batch the engine really computes at once (1 = no real batching)

    @property
    def device(self) -> str: ...  # "cpu", "cuda:0", ... once loaded

    @property
    def precision(self) -> str: ...  # what is in force, e.g. "fp16 (vocoder fp32)" or "fp32"

    @property
    def fp16_supported(self) -> bool: ...  # whether fp16 can really run on the loaded device

    def load(self, device: str = "auto", fp16: bool = True) -> None:
        """Load weights onto device ("auto" picks CUDA when present); FP16 without CUDA warns and uses FP32."""

    def set_precision(self, fp16: bool) -> str:
        """Recast the resident model in place; return the precision now in force."""

    def synthesize(self, batch: Sequence[Utterance]) -> list[np.ndarray]:
        """Run one batch; return one 1-D float32 waveform in [-1, 1] per utterance, in order."""

    def speakable(self, text: str) -> bool:
        """Whether a normalised sentence has anything this engine can pronounce."""

    def unload(self) -> None:
        """Free the model and its device memory."""


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda" when CUDA is visible, else "cpu"; check an explicit CUDA request."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use --device cpu or auto")
    if device == "cuda":
        return "cuda:0"
    return device
