"""Frozen settings, checked once at the edge; change them with dataclasses.replace."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

ENGINE_NAMES = ("embedded", "sambert", "modelscope")
RUNTIMES = ("torch", "onnxruntime")  # what runs the non-autoregressive parts (app.engines.onnx_runtime)
SPEED_RANGE = (0.5, 2.0)  # tempo factor of a request: 2.0 is twice as fast
PITCH_RANGE_ST = (-6.0, 6.0)  # pitch shift of a request, semitones
VOLUME_RANGE_DB = (-12.0, 6.0)  # loudness change of a request, dB


def check_controls(speed: float, pitch: float, volume: float) -> None:
    """Refuse a request's speed/pitch/volume outside its range with a TTSInputError naming the value and the range."""
    from app.errors import TTSInputError

    for name, value, (lo, hi), unit in (("speed", speed, SPEED_RANGE, " (tempo factor)"),
                                        ("pitch", pitch, PITCH_RANGE_ST, " semitones"),
                                        ("volume", volume, VOLUME_RANGE_DB, " dB")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TTSInputError(f"{name}={value!r} is not a number; give one from {lo:g} to {hi:g}{unit}")
        if not lo <= value <= hi:  # NaN fails both comparisons
            raise TTSInputError(f"{name}={value!r} is outside {lo:g} to {hi:g}{unit}")


@dataclass(frozen=True)
class EngineSettings:
    """Which model to load and where; fixed for the life of the process."""

    name: str = "embedded"  # embedded (offline default) | sambert (native runtime) | modelscope (official pipeline)
    model: str | None = None  # model folder or hub id, for sambert and modelscope
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Sambert voices' trained emotions, for folders that do not say: ((voice, (emotion, ...)), ...) from --emotions
    emotions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in ENGINE_NAMES:
            raise ValueError(f"engine={self.name!r} is not one of {', '.join(ENGINE_NAMES)}")
        if self.emotions and self.name not in ("sambert", "modelscope"):
            raise ValueError(f"--emotions applies to the sambert and modelscope engines, not {self.name!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r} must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class BatchSettings:
    """Live settings: the worker applies a change between batches."""

    fp16: bool = True  # run the acoustic model in FP16 on CUDA (FP32 elsewhere, with a note)
    max_batch_size: int = 8  # most items run in one engine call
    max_wait_ms: float = 15.0  # how long the first waiting item may wait for others to join its batch
    clear_cache: bool = False  # torch.cuda.empty_cache() + gc.collect() after every batch
    cuda_graphs: bool = True  # decode by replaying CUDA graphs captured per batch/length bucket (CUDA only)
    runtime: str = "torch"  # torch | onnxruntime: what runs the vocoder (the decoders always run in torch)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if not 1 <= self.max_batch_size <= 64:
            raise ValueError(f"max_batch_size={self.max_batch_size} must be between 1 and 64")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms={self.max_wait_ms} must be between 0 and 1000")


@dataclass(frozen=True)
class ServeSettings:
    """How requests are admitted and the app is served."""

    queue_size: int = 256  # most sentences waiting at once; past it submit fails with "busy"
    max_chars: int = 1000  # longest text one request may carry
    request_timeout_s: float = 300.0  # a caller gives up after this long; its queued items are skipped
    post_workers: int = 2  # CPU threads rendering emotion/speed/pitch/volume after the batch (never the model's worker)
    host: str = "127.0.0.1"  # address the web server binds
    port: int = 7860  # port the web server binds
    share: bool = False  # ask Gradio for a public share link
    auth: tuple[str, str] | None = None  # (user, password) for the web page, if any
    # (user, password) of the operator, who alone may tune a shared server (--admin or TTS_ADMIN); kept out of repr
    admin: tuple[str, str] | None = field(default=None, repr=False)
    max_queued_per_client: int = 64  # most sentences one caller (page session, user, API client) may have waiting; 0: no cap

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size={self.queue_size} must be at least 1")
        if self.max_queued_per_client < 0:
            raise ValueError(f"max_queued_per_client={self.max_queued_per_client} must be 0 (no cap) or more")
        if self.admin is not None and self.auth is not None and self.admin[0] == self.auth[0]:
            raise ValueError(f"the operator's login {self.admin[0]!r} must differ from the visitors' --auth login")
        if not 1 <= self.post_workers <= 64:
            raise ValueError(f"post_workers={self.post_workers} must be between 1 and 64")
        if not 1 <= self.max_chars <= 20000:
            raise ValueError(f"max_chars={self.max_chars} must be between 1 and 20000")
        if not 0 < self.port < 65536:
            raise ValueError(f"port={self.port} is not a valid TCP port")
