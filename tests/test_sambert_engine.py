"""The sambert engine on random-weight folders: interface, speakers/emotions from the folder, batching, errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from app.engines.base import EngineBase, Utterance
from app.errors import EngineUnavailableError
from tests.fixtures.sambert_writer import make_folder

SENTENCES = ["今天天气很好。", "我们一起去公园散步吧，顺便买点水果。", "好。", "二零二四年三月五日，我用GPU跑模型。"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from app.engines.sambert.engine import SambertEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # restored below: the setting is process-wide
    folder = make_folder(tmp_path_factory.mktemp("engine"), voices=("zhitian_emo", "zhibei_emo"), speakers=("F7",))
    eng = SambertEngine(model=str(folder))
    assert eng.speakers == ("zhitian_emo", "zhibei_emo")  # cheap peek at voices.json before load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eng.load("cpu", fp16=True)
    yield eng
    eng.unload()
    torch.set_num_threads(threads)


def test_implements_the_engine_protocol(engine):
    assert isinstance(engine, EngineBase)
    assert engine.name == "sambert" and engine.sample_rate == 16000
    assert engine.default_speaker == "zhitian_emo"
    assert engine.emotions == ("neutral", "happy", "sad")
    assert engine.device == "cpu" and not engine.fp16_supported


def test_fp16_without_cuda_falls_back_with_a_note(engine):
    with pytest.warns(RuntimeWarning, match="FP16 needs CUDA"):
        assert engine.set_precision(True) == "fp32"
    assert any("FP16 needs CUDA" in n for n in engine.notes) and engine.precision == "fp32"
    assert engine.set_precision(False) == "fp32" and engine.notes == ()


def test_batch_output_matches_one_at_a_time_and_keeps_order(engine):
    batch = [Utterance(text, speaker, emotion) for text, speaker, emotion in zip(
        SENTENCES, ["zhitian_emo", "zhibei_emo", "zhitian_emo", "zhibei_emo"], ["neutral", "happy", "sad", "neutral"])]
    together = engine.synthesize(batch)
    alone = [engine.synthesize([u])[0] for u in batch]
    assert len(together) == len(batch)
    for a, b in zip(alone, together):
        assert b.dtype == np.float32 and b.ndim == 1 and np.abs(b).max() <= 1.0
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert len(together[1]) > len(together[2])  # a long sentence gives more audio than 好。


def test_emotion_changes_the_audio_and_one_the_voice_lacks_is_refused(engine):
    from app.errors import TTSInputError

    neutral, happy = engine.synthesize([Utterance("今天天气很好。", "zhitian_emo", e) for e in ("neutral", "happy")])
    assert np.abs(neutral[: len(happy)] - happy[: len(neutral)]).max() > 1e-4
    with pytest.raises(TTSInputError, match="unknown emotion 'angry'"):  # never silently spoken as neutral
        engine.check("zhitian_emo", "angry")


def test_speakable_and_symbols(engine):
    assert engine.speakable("你好") and not engine.speakable("……！")
    symbols = engine.symbols(Utterance("你好", "zhibei_emo", "happy"))
    assert symbols.split()[0] == "{n_c$tone2$s_begin$word_begin$emotion_happy$F7}"


def test_duration_scale_slows_speech(engine):
    utterance = Utterance("我们一起去公园散步吧。", "zhitian_emo")
    normal = engine.synthesize([utterance])[0]
    engine.duration_scale = 1.5
    try:
        slow = engine.synthesize([utterance])[0]
    finally:
        engine.duration_scale = 1.0
    assert len(slow) > 1.3 * len(normal)


def test_registry_builds_it_and_a_bad_folder_fails_clearly(tmp_path):
    from app.engines import create_engine
    from app.settings import EngineSettings

    eng = create_engine(EngineSettings(name="sambert", model=str(tmp_path / "missing")))
    assert eng.name == "sambert" and eng.speakers == ()
    with pytest.raises(EngineUnavailableError, match="does not exist"):
        eng.load("cpu", fp16=False)


def test_legacy_folder_and_multi_speaker_voice(tmp_path):
    from app.engines.sambert.engine import SambertEngine

    folder = make_folder(tmp_path, layout="legacy", speakers=("F7", "M7"), emotions=("emotion_neutral", "emotion_angry"))
    eng = SambertEngine(model=str(folder))
    eng.load("cpu", fp16=False)
    assert eng.speakers == ("test_voice/F7", "test_voice/M7") and eng.emotions == ("neutral", "angry")
    a, b = eng.synthesize([Utterance("你好。", s) for s in eng.speakers])
    assert a.shape != b.shape or np.abs(a - b).max() > 1e-4


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_engine(tmp_path):
    from app.engines.sambert.engine import SambertEngine

    eng = SambertEngine(model=str(make_folder(tmp_path)))
    eng.load("cuda", fp16=True)
    assert eng.precision.startswith("fp16")
    batch = [Utterance(t, "test_voice") for t in SENTENCES]
    fp16 = eng.synthesize(batch)
    assert eng.set_precision(False) == "fp32"
    fp32 = eng.synthesize(batch)
    for a, b in zip(fp16, fp32):
        assert a.shape == b.shape and np.abs(a - b).max() < 2e-2
    eng.unload()


def test_through_the_service_each_caller_gets_its_own_audio(engine):
    from concurrent.futures import ThreadPoolExecutor

    from app.service import TTSService
    from app.settings import BatchSettings

    svc = TTSService(engine, BatchSettings(max_batch_size=4, max_wait_ms=50)).start(warmup=False)
    jobs = [(SENTENCES[i % 2], ("zhitian_emo", "zhibei_emo")[i // 2], ("neutral", "happy")[i % 2]) for i in range(4)]
    alone = [svc.submit(*job).audio for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: svc.submit(*job), jobs))
    svc.close()
    assert max(r.size for r in svc.batch_log) > 1
    for a, res in zip(alone, together):
        assert res.sample_rate == 16000 and a.shape == res.audio.shape
        assert np.abs(a - res.audio).max() < 1e-4


def test_launch_say_with_a_model_folder(tmp_path):
    import subprocess
    import sys
    import wave
    from pathlib import Path

    folder = make_folder(tmp_path)
    out = tmp_path / "out.wav"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "launch.py", "--engine", "sambert", "--model", str(folder), "--device", "cpu",
                           "--say", "你好，世界。", "--out", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with wave.open(str(out), "rb") as w:
        assert w.getframerate() == 16000 and w.getnframes() > 1600
    missing = subprocess.run([sys.executable, "launch.py", "--engine", "sambert", "--model", str(tmp_path / "nope"), "--say", "你好"],
                             cwd=root, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "error:" in missing.stderr


def test_emotions_are_offered_per_voice(engine):
    for speaker in engine.speakers:
        offered = engine.emotions_for(speaker)
        assert "neutral" in offered and set(offered) <= set(engine.emotions)
        engine.check(speaker, offered[-1])
    from app.errors import TTSInputError

    with pytest.raises(TTSInputError, match="unknown emotion 'furious'"):
        engine.check(engine.speakers[0], "furious")
