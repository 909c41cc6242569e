"""A request's speed, pitch and volume, rendered by the Sambert model itself where it can.

Sambert's variance adaptor predicts, per symbol, a duration (frames), a pitch and an energy, all before the length
regulator; the decoder renders what they say. So (per item, inside any batch):
- speed: predicted frames per symbol are multiplied by 1/speed before rounding (AcousticInput.duration_scale):
  the model's own prosody at another tempo, no time-stretching.
- pitch: the predicted pitch is shifted before the pitch embedding and the duration predictor read it
  (AcousticInput.pitch_scale / pitch_bias), so the decoder renders the new contour itself.
- volume: an exact gain on the waveform. Energy is not used: KAN-TTS's energy is the per-phone mean of the STFT
  magnitude norm, normalised by the training set's mean and std, and how the decoder renders a shifted energy is
  learnt, neither calibrated in dB nor free of changing the voice quality; a gain is exact in dB.

Pitch units. KAN-TTS (kantts/preprocess/audio_processor: get_pitch, f0_norm_mean_std, average_by_duration)
trains on p = (F - mu) / sigma per symbol, where F is the symbol's mean voiced F0 in Hz, mu and sigma the training
set's frame F0 mean and standard deviation with unvoiced frames counted as 0 Hz, and p = 0 exactly for a symbol
without voiced frames. s semitones multiply F by k = 2 ** (s / 12), so p' = k * p + (k - 1) * mu / sigma on voiced
symbols; unvoiced ones keep their (near-zero) prediction. mu / sigma is all the mapping needs, but KAN-TTS keeps
mu and sigma in the training data (f0/f0_mean.txt, f0_std.txt), not in the published model folders (only NSF voices
ship them, as am/mvn.npy, and the native runtime does not run NSF voices). With a voiced fraction v of frames and
voiced F0 of mean m and standard deviation s, mu / sigma = v m / sqrt(v s^2 + v (1 - v) m^2); it depends on the
speaker mostly through v (about sqrt(v / (1 - v)) when s << m). PITCH_MEAN_OVER_STD is that ratio for v = 0.55 and
s / m = 0.2 (see docs/modelscope.md for how it was chosen and what remains to measure on a real voice).
"""
from __future__ import annotations

import math

import numpy as np

# mu / sigma of KAN-TTS's frame F0 normalisation: v = 0.55 voiced frames, voiced F0 standard deviation 0.2 of its mean.
PITCH_MEAN_OVER_STD = 0.55 / math.sqrt(0.55 * 0.2**2 + 0.55 * 0.45)
# Phones whose symbols carry no voiced F0 in KAN-TTS's training targets: breaks, pauses and voiceless consonants
# (Mandarin initials with the _c suffix, English ARPAbet); their pitch is left as predicted.
UNVOICED_PHONES = frozenset(
    ["#1", "#2", "#3", "#4", "pau"]
    + [p + "_c" for p in "b p d t g k f h j q xx zh ch sh z c s".split()]
    + "p t k f th s sh ch hh".split()
)


def duration_scale(speed: float) -> float:
    """Frames-per-symbol multiplier for a tempo factor (2.0 = twice as fast = half the frames)."""
    return 1.0 / speed


def pitch_factor(semitones: float) -> float:
    """F0 multiplier for a shift in semitones."""
    return 2.0 ** (semitones / 12.0)


def pitch_affine(symbols: str, semitones: float, mean_over_std: float = PITCH_MEAN_OVER_STD) -> tuple[np.ndarray, np.ndarray]:
    """Per-symbol (scale, bias) so that p' = scale * p + bias moves each voiced symbol's F0 by `semitones`."""
    phones = [token.strip("{}").split("$", 1)[0] for token in symbols.split()]
    voiced = np.array([p not in UNVOICED_PHONES for p in phones], dtype=np.float32)
    k = pitch_factor(semitones)
    return (1.0 + voiced * (k - 1.0)).astype(np.float32), (voiced * (k - 1.0) * mean_over_std).astype(np.float32)


def apply_gain(waveform: np.ndarray, volume_db: float) -> np.ndarray:
    """waveform * 10 ** (dB / 20), clipped to [-1, 1] (the engine contract); 0 dB returns it untouched."""
    if volume_db == 0.0:
        return waveform
    return np.clip(waveform * np.float32(10.0 ** (volume_db / 20.0)), -1.0, 1.0).astype(np.float32)
