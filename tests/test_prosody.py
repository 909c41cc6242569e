"""Emotion by prosody rules and speed/pitch/volume on real embedded speech, measured afresh on the output waveforms
with pyworld's own Harvest tracker and frame energies (profiling.bench.prosody.measure)."""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from app import prosody
from app.audio import join_sentences
from app.engines.base import EMOTIONS_RULES, NEUTRAL, Utterance
from app.errors import TTSInputError
from app.postprocess import POST_NICENESS
from app.prosody import EMOTION_RULES, Adjustment, render
from app.service import TTSService
from app.settings import BatchSettings
from profiling.bench.prosody import boundary_move, compare, measure, without_boundary

SENTENCES = ["今天的天气真不错，我们去公园走走吧。", "窗外下起了大雨，路上的行人越来越少。"]
SPEAKERS = ["Aijia", "biaobei"]
EMOTIONS = [e for e in EMOTION_RULES if e != NEUTRAL]


@pytest.fixture(scope="module")
def neutral(engine):
    """The engine's own output for each (speaker, sentence), same seeds throughout."""
    return {(s, i): engine.synthesize([Utterance(t, s, seed=i)])[0] for s in SPEAKERS for i, t in enumerate(SENTENCES)}


def effects(neutral, sample_rate: int, adjustment: Adjustment) -> pd.DataFrame:
    """Measured changes against neutral for every (speaker, sentence)."""
    rows = []
    for audio in neutral.values():
        rows.append(compare(measure(audio, sample_rate), measure(render(audio, sample_rate, adjustment), sample_rate)))
    return pd.DataFrame(rows)


def test_the_embedded_engine_offers_rule_emotions_for_every_voice(engine):
    assert engine.emotion_kind == EMOTIONS_RULES
    assert engine.emotions == (NEUTRAL, "happy", "sad", "angry", "surprise", "fear")
    assert all(engine.emotions_for(s) == engine.emotions for s in engine.speakers)


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_each_emotion_moves_prosody_as_its_table_says(engine, neutral, emotion):
    """Medians over two voices x two sentences. Tolerances: the tracker's median F0 of resynthesised speech is good to a
    few tenths of a semitone (+-0.75 st); the range ratio rests on 10/90 percentiles (+-0.1); tempo is frame-exact
    (+-3%); loudness is matched to the input before the gain (+-1 dB)."""
    rule = EMOTION_RULES[emotion]
    got = effects(neutral, engine.sample_rate, Adjustment(emotion)).median()
    assert abs(got.f0_level_st - rule.f0_level_st) <= 0.75, got.to_dict()
    assert abs(got.f0_range_ratio - rule.f0_range) <= 0.1, got.to_dict()
    assert abs(got.rate_ratio - rule.rate) <= 0.03, got.to_dict()
    assert abs(got.loudness_db - rule.loudness_db) <= 1.0, got.to_dict()


@pytest.mark.parametrize("emotion", [e for e in EMOTIONS if EMOTION_RULES[e].boundary_st])
def test_the_boundary_contour_moves_the_final_syllable(engine, neutral, emotion):
    """Against the same rendering without the contour: the final syllable's median F0 moves about half the ramp's end
    value (0.3-0.7 of it), the way the rule says; rising for happy and surprise, falling for angry and sad."""
    rule, moves = EMOTION_RULES[emotion], []
    for audio in neutral.values():
        flat = measure(render(audio, engine.sample_rate, Adjustment(emotion), without_boundary(emotion)), engine.sample_rate)
        moves.append(boundary_move(flat, measure(render(audio, engine.sample_rate, Adjustment(emotion)), engine.sample_rate)))
    assert 0.3 <= np.median(moves) / rule.boundary_st <= 0.7, moves


def test_speed_pitch_and_volume_land_where_asked(engine, neutral):
    """--speed 1.5 speaks 1.5x as fast, --pitch 3 raises the median F0 by 3 semitones, --volume -6 is 6 dB quieter."""
    faster = effects(neutral, engine.sample_rate, Adjustment(speed=1.5)).median()
    assert abs(faster.rate_ratio - 1.5) <= 0.04 and abs(faster.f0_level_st) <= 0.3 and abs(faster.loudness_db) <= 0.5, faster.to_dict()
    higher = effects(neutral, engine.sample_rate, Adjustment(pitch_st=3.0)).median()
    assert abs(higher.f0_level_st - 3.0) <= 0.4 and abs(higher.rate_ratio - 1.0) <= 0.02, higher.to_dict()
    quieter = effects(neutral, engine.sample_rate, Adjustment(volume_db=-6.0)).median()
    assert abs(quieter.loudness_db + 6.0) <= 0.5 and abs(quieter.f0_level_st) <= 0.1, quieter.to_dict()


def test_louder_never_clips(neutral):
    loudest = max(neutral.values(), key=lambda a: np.abs(a).max())
    out = render(loudest, 22050, Adjustment("angry", volume_db=6.0))
    assert np.abs(out).max() < 1.0 and out.dtype == np.float32


# A mixed batch: every emotion and each control, on a mix of voices and texts.
MIXED = [
    Utterance(SENTENCES[0], "Aijia", "happy", seed=1, speed=1.3),
    Utterance(SENTENCES[1], "biaobei", "sad", seed=2, pitch=-2.0),
    Utterance(SENTENCES[0], "biaobei", "angry", seed=3, volume=-6.0),
    Utterance(SENTENCES[1], "Aijia", "surprise", seed=4, speed=0.8, pitch=2.0, volume=3.0),
    Utterance(SENTENCES[0], "Aiwei", "fear", seed=5),
    Utterance(SENTENCES[1], "Aijia", NEUTRAL, seed=6, speed=1.5),
    Utterance(SENTENCES[0], "Aijia", NEUTRAL, seed=7),
]


def bands_db(x: np.ndarray, sample_rate: int = 22050, n: int = 1024, hop: int = 256) -> np.ndarray:
    """Energy per frame in third-octave bands from 100 Hz (blind to phase and to where exactly harmonics sit)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    power, freqs = np.abs(np.fft.rfft(frames, axis=1)) ** 2, np.fft.rfftfreq(n, 1 / sample_rate)
    edges = 100.0 * 2 ** (np.arange(21) / 3)
    return 10 * np.log10(np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges, edges[1:])], 1) + 1e-10)


def assert_same_sound(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal as heard, phase aside. WORLD resynthesis places glottal pulses by integrating F0, so the ~4e-3 a batch
    changes in the model's samples drifts the pulse phase and waveform correlation means nothing here; length, F0
    track, loudness and band energies are compared instead. Measured on the MIXED items: batched vs alone within
    0.02 st, 0.02 dB and 0.5 dB (bands); 0.5 st more pitch gives 0.5 st and 1.8-3.2 dB, another seed 0.5-1.3 st and
    3.4-8.1 dB, 1 dB more volume 1 dB: each of those fails a bound below."""
    assert abs(len(a) - len(b)) <= 256, f"{what}: {len(a)} vs {len(b)} samples"
    k = min(len(a), len(b))
    pa, pb = measure(a[:k], 22050), measure(b[:k], 22050)
    both = (pa.f0_hz > 0) & (pb.f0_hz > 0)
    assert np.median(np.abs(12 * np.log2(pa.f0_hz[both] / pb.f0_hz[both]))) <= 0.1, what
    assert abs(pa.loudness_db - pb.loudness_db) <= 0.3, what
    ba, bb = bands_db(a[:k]), bands_db(b[:k])
    heard = np.maximum(ba, bb) > max(ba.max(), bb.max()) - 50
    assert np.mean(np.abs(ba - bb)[heard]) <= 1.0, what


def test_batched_equals_one_at_a_time_for_every_control_setting(engine):
    svc = TTSService(engine)  # not started: only its adjustment rule is used
    svc.close()
    batched = engine.synthesize(MIXED)
    for u, b in zip(MIXED, batched):
        alone = engine.synthesize([u])[0]
        assert_same_sound(render(alone, engine.sample_rate, svc.post.adjustment(u)), render(b, engine.sample_rate, svc.post.adjustment(u)), str(u))


def test_concurrent_callers_with_mixed_emotions_and_speeds_get_their_own_audio(engine, monkeypatch):
    threads = set()
    real_render = prosody.render

    def spy(audio, sample_rate, adjustment):
        threads.add((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_render(audio, sample_rate, adjustment)

    monkeypatch.setattr(prosody, "render", spy)
    svc = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=50)).start(warmup=False)
    text = "我们明天一起去看望外婆。她一定很高兴。"
    jobs = [(s, e, sp) for s, e, sp in zip(["Aijia", "biaobei"] * 4, ["happy", NEUTRAL, "sad", "angry", NEUTRAL, "surprise", "fear", "happy"],
                                                 [1.0, 1.0, 1.25, 0.8, 1.5, 1.0, 1.0, 2.0])]
    alone = {job: svc.submit(text, job[0], job[1], seed=9, speed=job[2]) for job in jobs}
    barrier = threading.Barrier(len(jobs))

    def call(job):
        barrier.wait()
        return svc.submit(text, job[0], job[1], seed=9, speed=job[2])

    n_before = len(svc.batch_log)
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(zip(jobs, pool.map(call, jobs)))
    svc.close()
    assert max(r.size for r in svc.batch_log[n_before:]) > 1  # they really shared batches
    assert threads and all(name.startswith("tts-post") for name, _ in threads), threads  # never the model's worker
    if sys.platform == "linux":  # and at a lower priority than the worker, which keeps the cores when they are short
        assert {nice for _, nice in threads} == {POST_NICENESS}, threads
    for job, res in together.items():
        assert_same_sound(alone[job].audio, res.audio, str(job))
        assert (res.timings.emotion, res.timings.speed) == (job[1], job[2])
        assert (res.timings.post_s > 0) == (job[1] != NEUTRAL or job[2] != 1.0)
    durations = {job: len(res.audio) for job, res in together.items()}
    assert durations[("biaobei", "happy", 2.0)] < 0.6 * durations[("biaobei", NEUTRAL, 1.0)]  # speeds did not leak


def test_neutral_with_default_controls_is_the_engines_own_output_untouched(engine, monkeypatch):
    def forbidden(*args):
        raise AssertionError("post-processing was called for neutral with default controls")

    monkeypatch.setattr(prosody, "render", forbidden)
    svc = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=5)).start(warmup=False)
    result = svc.submit(SENTENCES[0], "Aijia", NEUTRAL, seed=3)
    streamed = [p.audio for p in svc.stream(SENTENCES[1], "biaobei", seed=4)]
    svc.close()
    (item,) = svc.plan(SENTENCES[0], "Aijia", NEUTRAL, seed=3)
    np.testing.assert_array_equal(result.audio, join_sentences(engine.synthesize([item]), engine.sample_rate))
    (item,) = svc.plan(SENTENCES[1], "biaobei", NEUTRAL, seed=4)
    np.testing.assert_array_equal(streamed[0], engine.synthesize([item])[0])
    assert result.timings.post_s == 0.0 and svc.request_log[-1].emotion == NEUTRAL


def test_streaming_renders_each_sentence_with_the_requests_controls(engine):
    svc = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=5)).start(warmup=False)
    text = "第一句话很短。第二句话也不长。"
    plain = [p.audio for p in svc.stream(text, "Aijia", seed=1)]
    fast = [p.audio for p in svc.stream(text, "Aijia", "happy", seed=1, speed=1.5)]
    svc.close()
    assert len(fast) == 2
    for p, f in zip(plain, fast):
        assert abs(len(f) / len(p) - 1 / (1.5 * EMOTION_RULES["happy"].rate)) < 0.03
    assert svc.request_log[-1].emotion == "happy" and svc.request_log[-1].speed == 1.5 and svc.request_log[-1].post_s > 0


@pytest.mark.parametrize(
    "controls,match",
    [
        (dict(speed=3.0), r"speed=3\.0 is outside 0\.5 to 2 \(tempo factor\)"),
        (dict(speed=0.25), r"speed=0\.25 is outside 0\.5 to 2"),
        (dict(pitch=-7), r"pitch=-7 is outside -6 to 6 semitones"),
        (dict(volume=float("nan")), r"volume=nan is outside -12 to 6 dB"),
        (dict(volume="loud"), r"volume='loud' is not a number"),
        (dict(emotion="furious"), r"unknown emotion 'furious' for engine embedded; choose one of: neutral, happy, sad, angry, surprise, fear"),
    ],
)
def test_bad_controls_get_a_clear_error_naming_the_value_and_range(engine, controls, match):
    svc = TTSService(engine)
    svc.close()
    args = {"emotion": NEUTRAL, **controls}
    with pytest.raises(TTSInputError, match=match):
        svc.plan("你好。", "Aijia", **args)


def test_ui_handlers_show_the_emotion_kind_and_refuse_bad_controls(engine):
    import gradio as gr

    from app.web.handlers import Handlers

    svc = TTSService(engine).start(warmup=False)
    h = Handlers(svc, monitor=None)
    dropdown = h.emotions("biaobei", "sad")
    assert dropdown.value == "sad" and "rendered by prosody rules" in dropdown.info and dropdown.interactive
    with pytest.raises(gr.Error, match=r"pitch=6\.5 is outside -6 to 6 semitones"):
        h.synthesize("你好。", "Aijia", "happy", 1.0, 6.5, 0.0)
    with pytest.raises(gr.Error, match=r"speed=0\.1 is outside"):
        list(h.speak("你好。", "Aijia", "happy", 0.1))
    rate, audio = h.synthesize("你好。", "Aijia", "happy", 1.2, 2.0, -3.0)
    svc.close()
    assert rate == engine.sample_rate and audio.dtype == np.int16 and audio.size > 0


def test_what_is_left_to_the_signal_depends_on_the_engine():
    """Rule engines get their emotion rendered; trained ones render it themselves, and controls in the model are skipped."""
    from app.engines.base import EMOTIONS_TRAINED
    from app.postprocess import PostProcessor
    from tests.fixtures.fake_engine import FakeEngine

    class TrainedWithSpeed(FakeEngine):
        emotion_kind = EMOTIONS_TRAINED
        controls_in_model = frozenset({"speed"})

    class Rules(FakeEngine):
        emotion_kind = EMOTIONS_RULES

    item = Utterance("你好。", "alice", "happy", speed=1.5, pitch=2.0, volume=-3.0)
    trained, rules = PostProcessor(TrainedWithSpeed(), 1), PostProcessor(Rules(), 1)
    assert trained.adjustment(item) == Adjustment(NEUTRAL, speed=1.0, pitch_st=2.0, volume_db=-3.0)
    assert rules.adjustment(item) == Adjustment("happy", speed=1.5, pitch_st=2.0, volume_db=-3.0)
    assert trained.adjustment(Utterance("你好。", "alice", "happy", speed=1.5)).identity  # all of it in the model
    trained.close(), rules.close()
