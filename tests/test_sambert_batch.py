"""Batched inference equals batch-1 inference per item; FP16 stays close with the same frame counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engines.sambert.folder import load_model_folder
from app.engines.sambert.runtime import SambertVoice, SymbolItem
from app.engines.sambert.symbols import DEFAULT_PHONES
from tests.fixtures.sambert_writer import make_folder

BATCH_TOLERANCE = 1e-5  # FP32: batched vs alone, per item
FP16_MEL_TOLERANCE = 2e-2  # FP16 vs FP32 on random weights (measured ~3e-3); frame counts must be identical
FP16_WAVE_TOLERANCE = 2e-2


def random_symbols(rng: np.random.Generator, n: int, emotion: str = "emotion_neutral") -> str:
    """n random Mandarin phones with a break every few symbols and a final #4."""
    out = []
    for i in range(n):
        phone = DEFAULT_PHONES[int(rng.integers(0, 62))]
        tone = int(rng.integers(1, 6))
        out.append(f"{{{phone}$tone{tone}$s_begin$word_middle${emotion}$F7}}")
        if i % 4 == 3:
            out.append(f"{{#1$tone_none$s_none$word_none${emotion}$F7}}")
    out.append(f"{{#4$tone_none$s_none$word_none${emotion}$F7}}")
    return " ".join(out)


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    torch.set_num_threads(1)
    folder = load_model_folder(make_folder(tmp_path_factory.mktemp("batch")))
    return SambertVoice(folder.voices["test_voice"])


@pytest.fixture(scope="module")
def items():
    rng = np.random.default_rng(7)
    # very different lengths (2 .. 70 symbols) and speeds, so frame counts and decoder bands differ per item
    spec = [(2, 1.0, "emotion_neutral"), (70, 1.0, "emotion_happy"), (15, 3.0, "emotion_sad"), (40, 0.4, "emotion_neutral")]
    return [SymbolItem(random_symbols(rng, n, emo), scale) for n, scale, emo in spec]


def test_batch_equals_batch_of_one(voice, items):
    alone = [voice.synthesize([item])[0] for item in items]
    together = voice.synthesize(items)
    bands = {int(voice.acoustic.encode(voice.encode([it]))[2][0]) for it in items}
    assert len(bands) >= 3, f"test items should exercise different bands, got {bands}"
    for a, b in zip(alone, together):
        assert a.mel.shape == b.mel.shape and a.waveform.shape == b.waveform.shape
        np.testing.assert_array_equal(a.durations, b.durations)
        np.testing.assert_allclose(b.mel, a.mel, atol=BATCH_TOLERANCE, rtol=0)
        np.testing.assert_allclose(b.waveform, a.waveform, atol=BATCH_TOLERANCE, rtol=0)
        assert len(a.waveform) == a.mel.shape[0] * voice.hop_samples


def test_batch_order_does_not_matter(voice, items):
    forward = voice.synthesize(items)
    backward = voice.synthesize(items[::-1])[::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_allclose(a.waveform, b.waveform, atol=BATCH_TOLERANCE, rtol=0)


def test_duration_scale_is_a_real_speed_control(voice, items):
    item = items[1]
    normal = voice.synthesize([item])[0]
    slow = voice.synthesize([SymbolItem(item.symbols, 1.5)])[0]
    assert slow.mel.shape[0] > 1.3 * normal.mel.shape[0]
    np.testing.assert_allclose(slow.pitch, normal.pitch)  # prosody predicted once; only the timing changes


def test_controls_in_one_batch_equal_each_alone_and_do_what_they_say(voice, items):
    from app.engines.sambert.controls import PITCH_MEAN_OVER_STD, UNVOICED_PHONES, duration_scale, pitch_factor

    base = items[1].symbols
    controlled = [SymbolItem(base), SymbolItem(base, duration_scale(2.0)), SymbolItem(base, pitch_semitones=5.0),
                  SymbolItem(base, volume_db=-9.0), SymbolItem(base, duration_scale(0.5), -6.0, 6.0)]
    alone = [voice.synthesize([item])[0] for item in controlled]
    for a, b in zip(alone, voice.synthesize(controlled)):
        assert a.mel.shape == b.mel.shape
        np.testing.assert_allclose(b.waveform, a.waveform, atol=BATCH_TOLERANCE, rtol=0)
    plain, fast, high, quiet, slow = alone
    # speed: predicted frames per symbol times 1 / speed, rounded per symbol
    expected = np.floor((np.exp(voice.acoustic.encode(voice.encode([controlled[0]]))[3].log_durations[0].numpy()) - 1) / 2 + 0.5)
    np.testing.assert_array_equal(fast.durations, expected.astype(np.int64))
    # pitch: on voiced symbols p' = k p + (k - 1) mu / sigma, unvoiced ones keep the prediction (the predictor never
    # sees the shift, so the unshifted prediction is plain.pitch)
    k = pitch_factor(5.0)
    voiced = np.array([t.strip("{}").split("$")[0] not in UNVOICED_PHONES for t in base.split()])
    np.testing.assert_allclose(high.pitch[voiced], k * plain.pitch[voiced] + (k - 1) * PITCH_MEAN_OVER_STD, atol=1e-5)
    np.testing.assert_array_equal(high.pitch[~voiced], plain.pitch[~voiced])
    np.testing.assert_array_equal(high.energy, plain.energy)
    # volume: an exact gain, nothing else changes
    np.testing.assert_allclose(quiet.waveform, plain.waveform * np.float32(10 ** (-9 / 20)), atol=1e-6)
    np.testing.assert_array_equal(quiet.mel, plain.mel)
    assert np.abs(slow.waveform).max() <= 1.0


def test_fp16_is_close_with_identical_frame_counts(voice, items):
    fp32 = voice.synthesize(items)
    voice.set_fp16(True)
    try:
        fp16 = voice.synthesize(items)
    finally:
        voice.set_fp16(False)
    assert voice.acoustic.text_encoder.sy_emb.weight.dtype == torch.float32
    for a, b in zip(fp32, fp16):
        assert a.mel.shape == b.mel.shape
        np.testing.assert_array_equal(a.durations, b.durations)
        assert np.abs(a.mel - b.mel).max() < FP16_MEL_TOLERANCE
        assert np.abs(a.waveform - b.waveform).max() < FP16_WAVE_TOLERANCE


def test_real_config_size_batch_matches_batch_of_one(tmp_path):
    folder = load_model_folder(make_folder(tmp_path, size="real"))
    voice = SambertVoice(folder.voices["test_voice"])
    rng = np.random.default_rng(3)
    items = [SymbolItem(random_symbols(rng, 3)), SymbolItem(random_symbols(rng, 12), 1.7)]
    alone = [voice.synthesize([item])[0] for item in items]
    for a, b in zip(alone, voice.synthesize(items)):
        np.testing.assert_allclose(b.mel, a.mel, atol=BATCH_TOLERANCE, rtol=0)
        np.testing.assert_allclose(b.waveform, a.waveform, atol=BATCH_TOLERANCE, rtol=0)


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_batch_matches_cpu_fp32(tmp_path, items):
    files = load_model_folder(make_folder(tmp_path)).voices["test_voice"]
    cpu = SambertVoice(files).synthesize(items)
    gpu_voice = SambertVoice(files, "cuda")
    gpu32 = gpu_voice.synthesize(items)
    gpu_voice.set_fp16(True)
    gpu16 = gpu_voice.synthesize(items)
    for a, b, c in zip(cpu, gpu32, gpu16):
        np.testing.assert_array_equal(a.durations, c.durations)
        assert np.abs(a.mel - b.mel).max() < 1e-3
        assert a.mel.shape == c.mel.shape and np.abs(a.mel - c.mel).max() < FP16_MEL_TOLERANCE
        assert np.abs(a.waveform - c.waveform).max() < FP16_WAVE_TOLERANCE


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_controls_per_item_match_cpu(tmp_path, items):
    files = load_model_folder(make_folder(tmp_path)).voices["test_voice"]
    controlled = [SymbolItem(items[0].symbols, 0.5, 6.0, -6.0), SymbolItem(items[1].symbols),
                  SymbolItem(items[2].symbols, 1.5, -4.0, 3.0)]
    cpu = SambertVoice(files).synthesize(controlled)
    gpu = SambertVoice(files, "cuda").synthesize(controlled)
    for a, b in zip(cpu, gpu):
        np.testing.assert_array_equal(a.durations, b.durations)
        assert np.abs(a.pitch - b.pitch).max() < 1e-4 and np.abs(a.mel - b.mel).max() < 1e-3


def test_vocoder_is_causal_so_padded_batches_are_exact(voice):
    torch.manual_seed(0)
    mels = [torch.randn(1, 80, n) for n in (7, 31, 18)]
    padded = torch.zeros(3, 80, 31)
    for i, m in enumerate(mels):
        padded[i, :, : m.size(-1)] = m
    with torch.no_grad():
        together = voice.vocoder(padded)
        for i, m in enumerate(mels):
            alone = voice.vocoder(m)[0]
            torch.testing.assert_close(together[i, : alone.numel()], alone, atol=BATCH_TOLERANCE, rtol=0)
