"""The quality columns' measures: mel-cepstral distortion and the per-setting summary, on synthetic signals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from profiling.quality import mcd_db, quality_summary

RATE_HZ = 16000


def voiced(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with a syllable-rate envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.2 * tone * envelope + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def test_identical_audio_has_no_distortion():
    wave = voiced()
    assert mcd_db(wave, wave.copy(), RATE_HZ) == 0.0


def test_distortion_grows_with_the_damage():
    wave = voiced()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(wave)).astype(np.float32)
    faint, small, large = (mcd_db(wave, wave + level * noise, RATE_HZ) for level in (1e-4, 1e-3, 1e-2))
    other = mcd_db(wave, voiced(seed=2)[::-1].copy(), RATE_HZ)  # same kind of sound, other timing
    assert 0 < faint < small < large
    assert faint < 1.0 < small < other  # dB


def test_loudness_alone_is_not_distortion():
    wave = voiced()
    assert mcd_db(wave, 0.5 * wave, RATE_HZ) < 0.5  # c0 (overall level) is left out, as MCD does


def test_too_short_audio_has_no_frames():
    assert math.isnan(mcd_db(np.zeros(10, np.float32), np.zeros(10, np.float32), RATE_HZ))


def test_summary_counts_changed_lengths_and_non_finite_items():
    refs = [voiced(seed=s) for s in range(4)]
    outs = [refs[0].copy(), refs[1][:-200].copy(), refs[2].copy(), refs[3].copy()]
    outs[3][100] = np.nan
    summary = quality_summary(refs, outs, RATE_HZ)
    assert summary["frames_changed_share"] == 0.25 and summary["nonfinite_items"] == 1.0
    assert 0.0 <= summary["mcd_db"] < 1.0  # the NaN item is left out of the mean, the truncated one aligns by position
    with pytest.raises(ValueError, match="3 outputs for 4 references"):
        quality_summary(refs, outs[:3], RATE_HZ)
