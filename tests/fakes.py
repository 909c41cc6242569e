"""A tiny fake engine for queue and service tests (the real one is tested in test_engine_embedded.py)."""
from __future__ import annotations

import threading
import time
import zlib

import numpy as np
import torch

from app.engines.base import NEUTRAL, Utterance


class FakeEngine:
    """Deterministic audio from (text, speaker, seed); can be slow, fail, or run out of memory on cue."""

    name = "fake"
    sample_rate = 16000
    speakers = ("alice", "bob")
    emotions = (NEUTRAL, "happy")
    default_speaker = "alice"
    max_batch_size = 64
    device = "cpu"
    precision = "fp32"
    fp16_supported = False
    loaded = True

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None, oom_above: int | None = None, oom_on: str | None = None):
        self.delay_s = delay_s  # sleep per batch, to let queues build up
        self.fail_on = fail_on  # a batch containing this text raises ValueError
        self.oom_above = oom_above  # a batch larger than this raises CUDA OOM
        self.oom_on = oom_on  # a batch containing this text raises CUDA OOM, even alone
        self.batches: list[list[str]] = []
        self.precision_calls: list[bool] = []
        self._lock = threading.Lock()

    def load(self, device="auto", fp16=True):
        pass

    def set_precision(self, fp16: bool) -> str:
        self.precision_calls.append(fp16)
        return self.precision

    def speakable(self, text: str) -> bool:
        return any(ch.isalnum() for ch in text)

    @staticmethod
    def expected(u: Utterance) -> np.ndarray:
        """What this engine returns for one utterance, whatever its batch."""
        key = zlib.crc32(f"{u.text}|{u.speaker}|{u.emotion}|{u.seed}".encode())
        n = 160 * (1 + len(u.text))
        return (np.sin(np.arange(n, dtype=np.float32) * (1 + key % 97) / 100) * 0.5).astype(np.float32)

    def synthesize(self, batch):
        with self._lock:
            self.batches.append([u.text for u in batch])
        if self.delay_s:
            time.sleep(self.delay_s)
        texts = [u.text for u in batch]
        if self.oom_on is not None and any(self.oom_on in t for t in texts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise ValueError(f"fake failure on {self.fail_on!r}")
        return [self.expected(u) for u in batch]

    def unload(self):
        pass
