"""Audio helpers: float <-> int16, WAV bytes, and joining sentences with pauses."""
from __future__ import annotations

import io
import wave
from typing import Sequence

import numpy as np

INT16_FULL_SCALE = 32767  # largest int16 sample
SENTENCE_PAUSE_S = 0.25  # silence between joined sentences
EDGE_PAUSE_S = 0.05  # silence before the first and after the last sentence, so players don't clip the onset


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16, clipping anything outside."""
    return (np.clip(audio, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)


def int16_to_float(audio: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1]."""
    return (audio.astype(np.float32) / (INT16_FULL_SCALE + 1)).astype(np.float32)


def pcm16_wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 samples -> a complete 16-bit PCM WAV file in memory."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(pcm).astype("<i2").tobytes())
    return buf.getvalue()


def float32_to_wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 -> a complete 16-bit PCM WAV file in memory."""
    return pcm16_wav_bytes(float_to_int16(audio), sample_rate)


def wav_bytes_to_float32(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file in memory -> (mono float32 in [-1, 1], sample rate); stereo is averaged."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM WAV, got {8 * w.getsampwidth()}-bit samples")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = int16_to_float(pcm)
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1).astype(np.float32)
    return audio, rate


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float32 audio as a 16-bit PCM WAV file."""
    with open(path, "wb") as f:
        f.write(float32_to_wav_bytes(audio, sample_rate))


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    """A float32 run of zeros."""
    return np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)


def join_sentences(pieces: Sequence[np.ndarray], sample_rate: int, pause_s: float = SENTENCE_PAUSE_S) -> np.ndarray:
    """Concatenate sentence waveforms in order with a short pause between them and a margin at both ends."""
    edge, gap = silence(EDGE_PAUSE_S, sample_rate), silence(pause_s, sample_rate)
    out: list[np.ndarray] = [edge]
    for i, piece in enumerate(pieces):
        if i:
            out.append(gap)
        out.append(np.asarray(piece, dtype=np.float32))
    out.append(edge)
    return np.concatenate(out)
