"""Emotion, speed, pitch and volume rendered on the waveform after the model: rule tables and pure functions.

Engines without trained emotions (EMOTIONS_RULES) get their emotion here, and every engine gets the speed, pitch and
volume it does not render inside its model. It is CPU signal processing that the service runs on its own small thread
pool, never on the model's worker thread; each call depends only on its own item, so batched == alone still holds.

How: the WORLD vocoder (pyworld, MIT) splits the waveform into an F0 contour, a spectral envelope and an aperiodicity
every 5 ms; the F0 contour is moved in semitones around the sentence's own median, so Mandarin lexical tone shapes
survive (they ride on top of the level); the final syllable(s) get the emotion's boundary movement; tempo resamples
the frame sequence (durations change, the spectral envelope, and so the voice's formants, do not); WORLD resynthesises.
Loudness is matched back to the input before the requested gain, and a soft limiter keeps peaks below full scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engines.base import NEUTRAL

FRAME_PERIOD_MS = 5.0  # WORLD analysis hop
F0_FLOOR_HZ, F0_CEIL_HZ = 71.0, 700.0  # F0 search range: WORLD's default floor (low male voices), a high female ceiling
BOUNDARY_S = 0.3  # voiced time at the end of a sentence that carries the boundary movement: about its last syllable
LIMITER_KNEE = 0.8  # peaks above this are compressed smoothly towards full scale instead of clipping


@dataclass(frozen=True)
class EmotionRule:
    """How an emotion moves a sentence's prosody against the same voice's neutral reading."""

    f0_level_st: float  # shift of the sentence's median F0, semitones
    f0_range: float  # factor on every frame's distance (in semitones) from the sentence median: > 1 livelier
    rate: float  # tempo factor: > 1 speaks faster
    loudness_db: float  # level change, dB
    boundary_st: float  # F0 movement reached at the end of the final syllable(s): > 0 rises, < 0 falls


# Directions and relative degrees from Murray & Arnott (1993), "Toward the simulation of emotion in synthetic speech:
# a review of the literature on human vocal emotion", JASA 93(2), Table I ("summary of human vocal emotion effects"):
#   anger:     rate slightly faster, pitch average very much higher, range much wider, intensity higher,
#              pitch changes abrupt on stressed syllables
#   happiness: rate faster or slower, pitch average much higher, range much wider, intensity higher,
#              smooth upward inflections
#   sadness:   rate slightly slower, pitch average slightly lower, range slightly narrower, intensity lower,
#              downward inflections
#   fear:      rate much faster, pitch average very much higher, range much wider, intensity normal,
#              pitch changes normal
# Surprise is not in that table; it follows Cahn's Affect Editor "surprised" (Cahn 1990, "The generation of affect in
# synthesized speech", JAVIOS 8): raised and widened pitch, a final rise, faster and louder than neutral.
# Happiness's "faster or slower" is resolved as slightly faster by the MARY TTS EmotionML mapping of Schroeder's
# rules (rate % = 0.5 activation + 0.2 evaluation: positive for joy).
# The table is qualitative; its words become numbers here, chosen with Mandarin in mind (tones must stay readable,
# so ranges are scaled mildly and levels kept within 3 semitones):
#   pitch average: slightly 1 st, much 2 st, very much 3 st;  range: slightly narrower x0.85, much wider x1.25;
#   rate: slightly x1.08 (x0.9 slower), much x1.2;  intensity: higher +3 dB, lower -3 dB;
#   boundary: upward/rising +2 st (surprise's final rise +4 st), downward/falling -2 st.
EMOTION_RULES: dict[str, EmotionRule] = {
    NEUTRAL: EmotionRule(f0_level_st=0.0, f0_range=1.0, rate=1.0, loudness_db=0.0, boundary_st=0.0),
    "happy": EmotionRule(f0_level_st=2.0, f0_range=1.25, rate=1.05, loudness_db=3.0, boundary_st=2.0),
    "sad": EmotionRule(f0_level_st=-1.0, f0_range=0.85, rate=0.9, loudness_db=-3.0, boundary_st=-2.0),
    "angry": EmotionRule(f0_level_st=3.0, f0_range=1.25, rate=1.08, loudness_db=3.0, boundary_st=-2.0),
    "surprise": EmotionRule(f0_level_st=2.0, f0_range=1.25, rate=1.08, loudness_db=2.0, boundary_st=4.0),
    "fear": EmotionRule(f0_level_st=3.0, f0_range=1.25, rate=1.2, loudness_db=0.0, boundary_st=0.0),
}
RULE_EMOTIONS = tuple(EMOTION_RULES)  # neutral first, then Sambert's category names


@dataclass(frozen=True)
class Adjustment:
    """What post-processing does to one item: the emotion to render by rule and the controls left to the signal."""

    emotion: str = NEUTRAL  # a key of EMOTION_RULES (neutral when the model renders emotion itself)
    speed: float = 1.0  # tempo factor on top of the emotion's
    pitch_st: float = 0.0  # semitones on top of the emotion's level
    volume_db: float = 0.0  # dB on top of the emotion's loudness

    @property
    def identity(self) -> bool:
        """Whether nothing is to be done (then nothing is called: the engine's samples are returned untouched)."""
        return self.emotion == NEUTRAL and self.speed == 1.0 and self.pitch_st == 0.0 and self.volume_db == 0.0


def render(audio: np.ndarray, sample_rate: int, adjustment: Adjustment,
           rules: dict[str, EmotionRule] = EMOTION_RULES) -> np.ndarray:
    """Apply one item's emotion rule and controls to its float32 waveform; returns a new float32 waveform."""
    rule = rules[adjustment.emotion]
    level_st = rule.f0_level_st + adjustment.pitch_st
    rate = rule.rate * adjustment.speed
    gain_db = rule.loudness_db + adjustment.volume_db
    x = np.asarray(audio, dtype=np.float64)
    if x.size and (level_st != 0.0 or rule.f0_range != 1.0 or rule.boundary_st != 0.0 or rate != 1.0):
        y = _reshape(x, sample_rate, level_st, rule.f0_range, rule.boundary_st, rate)
        y *= _active_rms(x) / max(_active_rms(y), 1e-9)  # resynthesis and pitch moves shift the level: undo that
    else:
        y = x.copy()
    if gain_db:
        y *= 10.0 ** (gain_db / 20.0)
    return soft_limit(y).astype(np.float32)


def _reshape(x: np.ndarray, fs: int, level_st: float, f0_range: float, boundary_st: float, rate: float) -> np.ndarray:
    """WORLD analysis, F0 moved and frames retimed, resynthesis."""
    # Harvest, not DIO: DIO's voicing drops out around voiced consonants and creaky sentence ends, and those frames
    # come back as noise; on our voices identity resynthesis scored NISQA 3.68 (Aijia) / 3.98 (biaobei) with Harvest
    # against 3.49 / 3.56 with DIO (the untouched audio: 3.76 / 4.24), for about twice the CPU (0.20 against 0.09 s
    # per audio second here).
    import pyworld  # here, not at import: the engines and the service import this module for its tables, and a bare
    # GPU box (profiling/bench/gpu_suite.sh) has no pyworld; only rendering an emotion or a control needs it

    f0, times = pyworld.harvest(x, fs, f0_floor=F0_FLOOR_HZ, f0_ceil=F0_CEIL_HZ, frame_period=FRAME_PERIOD_MS)
    fft_size = pyworld.get_cheaptrick_fft_size(fs, F0_FLOOR_HZ)
    sp = pyworld.cheaptrick(x, f0, times, fs, f0_floor=F0_FLOOR_HZ, fft_size=fft_size)
    ap = pyworld.d4c(x, f0, times, fs, fft_size=fft_size)
    f0 = move_f0(f0, level_st, f0_range, boundary_st, FRAME_PERIOD_MS / 1000.0)
    if rate != 1.0:
        f0, sp, ap = retime(f0, sp, ap, rate)
    return pyworld.synthesize(np.ascontiguousarray(f0), np.ascontiguousarray(sp), np.ascontiguousarray(ap), fs, FRAME_PERIOD_MS)


def move_f0(f0: np.ndarray, level_st: float, f0_range: float, boundary_st: float, hop_s: float) -> np.ndarray:
    """Move voiced frames around the sentence's median in semitones; ramp the boundary over the final voiced frames."""
    voiced = f0 > 0
    if not voiced.any():
        return f0.copy()
    median = np.median(f0[voiced])
    st = 12.0 * np.log2(f0[voiced] / median)
    st = st * f0_range + level_st + boundary_ramp(voiced, boundary_st, hop_s)[voiced]
    out = np.zeros_like(f0)
    out[voiced] = median * 2.0 ** (st / 12.0)
    return out


def boundary_ramp(voiced: np.ndarray, boundary_st: float, hop_s: float) -> np.ndarray:
    """Semitones per frame: 0 until the last BOUNDARY_S of voiced time, then rising linearly to boundary_st at its end."""
    ramp = np.zeros(voiced.shape)
    if boundary_st == 0.0 or not voiced.any():
        return ramp
    idx = np.flatnonzero(voiced)
    tail = idx[-max(1, int(round(BOUNDARY_S / hop_s))):]  # the final syllable(s), skipping unvoiced consonants
    ramp[tail] = boundary_st * np.linspace(1.0 / len(tail), 1.0, len(tail))
    return ramp


def retime(f0: np.ndarray, sp: np.ndarray, ap: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample the frame sequence to len/rate frames: envelopes interpolated (log for the spectrum), voicing nearest."""
    n = len(f0)
    m = max(1, int(round(n / rate)))
    pos = np.linspace(0.0, n - 1, m)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (pos - i0)[:, None]
    sp_out = np.exp((1 - w) * np.log(np.maximum(sp[i0], 1e-16)) + w * np.log(np.maximum(sp[i1], 1e-16)))
    ap_out = (1 - w) * ap[i0] + w * ap[i1]
    nearest = np.rint(pos).astype(int)
    f0_out = f0[nearest].copy()
    both = (f0[i0] > 0) & (f0[i1] > 0)
    wf = w[:, 0][both]
    f0_out[both] = np.exp((1 - wf) * np.log(f0[i0][both]) + wf * np.log(f0[i1][both]))
    return f0_out, sp_out, ap_out


def _active_rms(x: np.ndarray, frame: int = 512, floor_db: float = -40.0) -> float:
    """RMS over the frames within floor_db of the loudest one (leading/trailing silence and pauses do not count)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    energy = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energy >= energy.max() * 10.0 ** (floor_db / 10.0)
    return float(np.sqrt(np.mean(energy[active])))


def soft_limit(x: np.ndarray, knee: float = LIMITER_KNEE) -> np.ndarray:
    """Identity below the knee; above it, tanh compression that approaches (never reaches) full scale."""
    mag = np.abs(x)
    over = mag > knee
    if not over.any():
        return x
    out = x.copy()
    out[over] = np.sign(x[over]) * (knee + (1.0 - knee) * np.tanh((mag[over] - knee) / (1.0 - knee)))
    return out
