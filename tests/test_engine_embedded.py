"""The embedded engine on its real weights (CPU): loading, plausible speech, exact batching, precision."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from app.engines.embedded import weights as W
from app.engines.base import Utterance
from app.errors import EngineUnavailableError
from profiling.sentences import sentence_list

SENTENCES = sentence_list("engine")  # profiling/sentences_zh.json: the GPU box gets their symbol ids
SPEAKERS = ["Aijia", "biaobei", "Xiaoxue", "Aina", "Aiyu", "Aijia", "Xiaobei", "Aiwei"]


def utterances(n: int) -> list[Utterance]:
    return [Utterance(SENTENCES[i], SPEAKERS[i], seed=100 + i) for i in range(n)]


@pytest.fixture(scope="module")
def alone(engine):
    """Each utterance synthesized in a batch of one: mels and waveforms."""
    mels = [engine.synthesize_mels([u])[0][0] for u in utterances(8)]
    return mels


@pytest.mark.parametrize("speaker", ["Aijia", "biaobei", "Xiaoxue"])
def test_real_weights_speak_plausibly(engine, speaker):
    text = "今天天气很好，我们一起去公园散步吧。"
    audio = engine.synthesize([Utterance(text, speaker, seed=1)])[0]
    seconds = len(audio) / engine.sample_rate
    chars_per_s = len(text.strip("，。")) / seconds
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 3.0 <= chars_per_s <= 6.5, f"{speaker}: {chars_per_s:.1f} chars/s over {seconds:.2f} s"
    assert np.isfinite(audio).all()
    assert np.sqrt(np.mean(audio**2)) > 0.02, "silent"
    assert np.mean(np.abs(audio) > 0.99) < 1e-3, "clipped"


@pytest.mark.parametrize("n", [2, 4, 8])
def test_batched_equals_one_at_a_time(engine, alone, n):
    mels, stopped = engine.synthesize_mels(utterances(n))
    assert all(stopped)
    for i, (a, b) in enumerate(zip(alone[:n], mels)):
        assert abs(a.shape[1] - b.shape[1]) <= 1, f"item {i}: {a.shape[1]} vs {b.shape[1]} frames"
        k = min(a.shape[1], b.shape[1])
        # autoregression over hundreds of frames accumulates float rounding from other matmul shapes: ~1e-3
        assert torch.allclose(a[:, :k], b[:, :k], atol=2e-2), f"item {i}: max diff {(a[:, :k] - b[:, :k]).abs().max():.2e}"


def test_batched_waveforms_equal_one_at_a_time(engine):
    utts = utterances(4)
    batched = engine.synthesize(utts)
    for u, b in zip(utts, batched):
        a = engine.synthesize([u])[0]
        k = min(len(a), len(b))
        assert abs(len(a) - len(b)) <= 256
        assert np.abs(a[:k] - b[:k]).max() < 0.05
        assert np.corrcoef(a[:k], b[:k])[0, 1] > 0.999


def test_items_keep_their_own_seed_and_speaker(engine):
    text = "我们一起去公园散步吧。"
    a1, a2, b1 = engine.synthesize([Utterance(text, "Aijia", seed=1), Utterance(text, "Aijia", seed=2), Utterance(text, "Xiaoxue", seed=1)])
    again = engine.synthesize([Utterance(text, "Aijia", seed=1)])[0]
    k = min(len(a1), len(again))
    assert np.abs(a1[:k] - again[:k]).max() < 0.05  # same request, same audio
    assert len(a1) != len(b1) or np.abs(a1 - b1).max() > 0.1  # another speaker sounds different


def test_speakable(engine):
    assert engine.speakable("你好")
    assert not engine.speakable("，。！")


def test_fp16_without_cuda_falls_back_visibly():
    from app.engines.embedded.engine import EmbeddedEngine

    eng = EmbeddedEngine()
    with pytest.warns(RuntimeWarning, match="FP16 needs CUDA"):
        eng.load("cpu", fp16=True)
    assert eng.precision == "fp32" and any("FP16 needs CUDA" in n for n in eng.notes)
    assert eng._acoustic.embedding.weight.dtype == torch.float32


def test_tampered_weights_are_refused(tmp_path):
    fake = tmp_path / W.ACOUSTIC_FILE
    fake.write_bytes(b"not the file")
    with pytest.raises(EngineUnavailableError, match="sha256"):
        W.read_pickled_module(fake)


def test_cached_conversion_is_reused(tmp_path, engine):
    w1 = W.load_weights(tmp_path)
    assert (tmp_path / W.ACOUSTIC_SAFETENSORS).exists()
    w2 = W.load_weights(tmp_path)  # from the cache this time
    assert w1.acoustic.keys() == w2.acoustic.keys()
    assert all(torch.equal(w1.vocoder[k], w2.vocoder[k]) for k in w1.vocoder)


def test_missing_ttskit_gives_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineUnavailableError, match="pip install --no-deps ttskit==0.3.8"):
        W.load_weights(tmp_path / "empty")


@pytest.mark.requires_cuda
def test_cuda_fp16_batched_close_to_fp32(cuda_engine):
    utts = utterances(8)
    fp16 = cuda_engine.synthesize(utts)
    cuda_engine.set_precision(False)
    fp32 = cuda_engine.synthesize(utts)
    cuda_engine.set_precision(True)
    for a, b in zip(fp16, fp32):
        assert np.isfinite(a).all()
        assert abs(len(a) - len(b)) / len(b) < 0.25


def test_chunked_batched_vocoder_matches_whole_signal(engine, alone):
    mels = alone[:4]  # 52 to 744 frames: single-window and multi-window items
    for rows in (1, 8):
        many = engine._vocoder.vocode_many(mels, max_rows=rows)
        for mel, audio in zip(mels, many):
            whole = engine._vocoder.vocode(mel)
            assert audio.shape == whole.shape
            assert (audio - whole).abs().max() < 1e-4
