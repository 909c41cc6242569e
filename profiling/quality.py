"""The quality cost of a setting: its audio against a reference rendering of the same texts and seeds.

Mel-cepstral distortion here is the MFCC form: natural-log mel energies of 25 ms frames every 10 ms (floored 60 dB
below the reference's loudest band, so near-silent pauses, where any noise is a large log ratio, do not dominate), an orthonormal
DCT, coefficients 1..24 (c0, loudness, left out), frames aligned by position (same text and seed: the same frames
unless a frame count changed, which `frames_changed_share` reports on its own). It ranks settings against one
reference; it is not comparable with MCD figures computed by other toolkits (SPTK mcep, DTW alignment).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

FRAME_S = 0.025  # analysis window
HOP_S = 0.010  # analysis hop
N_MEL_BANDS = 40
N_CEPSTRA = 24  # c1..c24
DYNAMIC_RANGE = 1e-6  # mel energies are floored 60 dB below the reference's loudest: pauses do not dominate the mean
MCD_SCALE_DB = 10.0 / math.log(10.0) * math.sqrt(2.0)  # the usual MCD constant: dB from cepstral (natural log) units


def _mel_filterbank(sample_rate: int, n_fft: int, n_bands: int) -> np.ndarray:
    """(n_bands, n_fft // 2 + 1) triangular filters evenly spaced on the mel scale from 0 to Nyquist."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(0.0, mel(sample_rate / 2), n_bands + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lo) / (mid - lo)
    falling = (hi - bins[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_energies(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, N_MEL_BANDS) mel-band power of a mono float waveform; no frames for audio shorter than a window."""
    frame = int(round(FRAME_S * sample_rate))
    hop = int(round(HOP_S * sample_rate))
    n_fft = 1 << (frame - 1).bit_length()
    wave = np.asarray(wave, dtype=np.float64)
    if len(wave) < frame:
        return np.zeros((0, N_MEL_BANDS))
    count = 1 + (len(wave) - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop][:count] * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    return power @ _mel_filterbank(sample_rate, n_fft, N_MEL_BANDS).T


def mel_cepstrum(energies: np.ndarray, floor: float) -> np.ndarray:
    """(frames, N_CEPSTRA) cepstra c1..c24 of mel energies floored at floor."""
    log_mel = np.log(np.maximum(energies, floor))
    n = np.arange(N_MEL_BANDS)
    dct = np.cos(np.pi / N_MEL_BANDS * (n[None, :] + 0.5) * np.arange(1, N_CEPSTRA + 1)[:, None]) * math.sqrt(2.0 / N_MEL_BANDS)
    return log_mel @ dct.T


def mcd_db(reference: np.ndarray, test: np.ndarray, sample_rate: int) -> float:
    """Mean mel-cepstral distortion (dB) of test against reference over their common frames (NaN if none)."""
    ref, out = mel_energies(reference, sample_rate), mel_energies(test, sample_rate)
    n = min(len(ref), len(out))
    if n == 0:
        return float("nan")
    floor = max(float(ref.max()) * DYNAMIC_RANGE, np.finfo(np.float64).tiny)
    a, b = mel_cepstrum(ref, floor), mel_cepstrum(out, floor)
    return float(MCD_SCALE_DB * np.mean(np.sqrt(np.sum((a[:n] - b[:n]) ** 2, axis=1))))


def quality_summary(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray], sample_rate: int) -> dict[str, float]:
    """Per setting: mean MCD (dB) over items with finite audio, share of items whose length (frame count) changed,
    and how many items had a non-finite sample. Items are matched by position."""
    if len(references) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    finite = [bool(np.isfinite(out).all()) for out in outputs]
    distances = [mcd_db(ref, out, sample_rate) for ref, out, ok in zip(references, outputs, finite) if ok]
    distances = [d for d in distances if not math.isnan(d)]
    changed = [len(ref) != len(out) for ref, out in zip(references, outputs)]
    return {
        "mcd_db": float(np.mean(distances)) if distances else float("nan"),
        "frames_changed_share": float(np.mean(changed)) if changed else float("nan"),
        "nonfinite_items": float(finite.count(False)),
    }
