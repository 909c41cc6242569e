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
    # Both are published voices: they offer what their model cards document (app/engines/sambert/emotions.py).
    assert engine.emotions == ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
    assert engine.controls_in_model == {"speed", "pitch", "volume"}
    assert engine.device == "cpu" and not engine.fp16_supported


def test_fp16_without_cuda_falls_back_with_a_note(engine):
    with pytest.warns(RuntimeWarning, match="FP16 needs CUDA"):
        assert engine.set_precision(True) == "fp32"
    assert any("FP16 needs CUDA" in n for n in engine.notes) and engine.precision == "fp32"
    assert engine.set_precision(False) == "fp32" and engine.notes == ()


def test_batch_output_matches_one_at_a_time_and_keeps_order(engine):
    batch = [Utterance(text, speaker, emotion) for text, speaker, emotion in zip(
        SENTENCES, ["zhitian_emo", "zhibei_emo", "zhitian_emo", "zhibei_emo"], ["neutral", "happy", "sad", "hate"])]
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
    with pytest.raises(TTSInputError, match="unknown emotion 'calm'"):  # never silently spoken as neutral
        engine.check("zhitian_emo", "calm")


def test_speakable_and_symbols(engine):
    assert engine.speakable("你好") and not engine.speakable("……！")
    symbols = engine.symbols(Utterance("你好", "zhibei_emo", "happy"))
    assert symbols.split()[0] == "{n_c$tone2$s_begin$word_begin$emotion_happy$F7}"


CONTROLS = [dict(), dict(speed=1.6), dict(pitch=4.0), dict(volume=-6.0), dict(speed=0.6, pitch=-3.0, volume=3.0),
            dict(speed=2.0, pitch=6.0, volume=-12.0), dict(speed=0.5, pitch=-6.0, volume=6.0)]


def test_controls_apply_per_item_and_never_leak_into_the_batch(engine):
    """Each item's speed/pitch/volume apply to it alone: a mixed batch equals every item run alone, in any order."""
    batch = [Utterance(SENTENCES[i % 2], ("zhitian_emo", "zhibei_emo")[i % 2], "neutral", **c) for i, c in enumerate(CONTROLS)]
    alone = [engine.synthesize([u])[0] for u in batch]
    for order in (batch, batch[::-1]):
        together = dict(zip(map(id, order), engine.synthesize(order)))
        for u, a in zip(batch, alone):
            assert together[id(u)].shape == a.shape
            np.testing.assert_allclose(together[id(u)], a, atol=1e-5, rtol=0)
    from dataclasses import replace

    plain = [engine.synthesize([replace(u, speed=1.0, pitch=0.0, volume=0.0)])[0] for u in batch]
    assert len(alone[1]) < 0.75 * len(plain[1]) and len(alone[4]) > 1.3 * len(plain[4])  # speed is the model's tempo
    assert not np.array_equal(alone[2], plain[2])  # pitch goes through the model (exact mapping: test_sambert_batch.py)
    np.testing.assert_allclose(alone[3], plain[3] * np.float32(10 ** (-6 / 20)), atol=1e-6)  # volume is an exact gain
    assert np.abs(alone[6]).max() <= 1.0


def test_out_of_range_controls_are_refused_with_the_range():
    from app.errors import TTSInputError
    from app.settings import check_controls

    for bad, match in (((3.0, 0.0, 0.0), r"speed=3.0 is outside 0.5 to 2 \(tempo factor\)"), ((1.0, 7.0, 0.0), "pitch=7.0"),
                       ((1.0, 0.0, float("nan")), "volume=nan")):
        with pytest.raises(TTSInputError, match=match):
            check_controls(*bad)


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
    assert eng.speakers == ("test_voice/F7", "test_voice/M7") and eng.emotions == ("neutral", "angry")  # before load
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
    jobs = [(SENTENCES[i % 2], ("zhitian_emo", "zhibei_emo")[i // 2], ("neutral", "hate")[i % 2]) for i in range(4)]
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


HUB_ID = "damo/speech_sambert-hifigan_tts_zh-cn_16k"


def test_a_hub_id_is_downloaded_by_modelscope_snapshot_download_with_progress(tmp_path, monkeypatch):
    """The ModelScope hub cannot be reached from here: a fake snapshot_download stands in for modelscope's (the hub
    boundary); everything on our side of it (cache first, then the download with progress, then loading) is real."""
    import importlib

    from modelscope.hub.callback import TqdmCallback

    from app.engines.sambert.engine import SambertEngine
    from app.engines.sambert.hub import FAIL_FAST

    for name, value in FAIL_FAST.items():
        monkeypatch.setenv(name, value)  # restored after the test
    calls = []

    def fake_snapshot_download(model_id, local_files_only=False, progress_callbacks=None, **kwargs):
        calls.append((model_id, local_files_only, progress_callbacks))
        if local_files_only:
            raise ValueError(f"Cannot find the requested files in the cached path for {model_id}")
        folder = make_folder(tmp_path / "cache", voices=("zhibei_emo",))
        for callback in progress_callbacks:  # as modelscope_hub does per file
            bar = callback("voices/voices.json", 25)
            bar.update(25)
            bar.end()
        return str(folder)

    hub_module = importlib.import_module("modelscope.hub.snapshot_download")  # the module (modelscope.hub re-exports
    monkeypatch.setattr(hub_module, "snapshot_download", fake_snapshot_download)  # a function of the same name)
    eng = SambertEngine(model=HUB_ID)
    assert eng.speakers == ()  # nothing is fetched before load()
    eng.load("cpu", fp16=False)
    assert [(c[0], c[1]) for c in calls] == [(HUB_ID, True), (HUB_ID, False)] and calls[1][2] == [TqdmCallback]
    assert eng.speakers == ("zhibei_emo",) and "hate" in eng.emotions_for("zhibei_emo")
    assert eng.synthesize([Utterance("你好。", "zhibei_emo")])[0].size > 0


def test_a_hub_id_offline_fails_fast_with_the_download_command(tmp_path):
    """Real: modelscope's own snapshot_download, on a machine that cannot reach the hub."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    try:
        socket.getaddrinfo("modelscope.cn", 443)
        pytest.skip("modelscope.cn resolves here: this test is for machines without the hub")
    except OSError:
        pass
    root = Path(__file__).resolve().parent.parent
    env = {**__import__("os").environ, "MODELSCOPE_CACHE": str(tmp_path / "empty-cache")}
    proc = subprocess.run([sys.executable, "launch.py", "--engine", "sambert", "--model", HUB_ID, "--device", "cpu",
                           "--say", "你好"], cwd=root, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    local = "./models/speech_sambert-hifigan_tts_zh-cn_16k"
    assert f"modelscope download --model {HUB_ID} --local_dir {local}" in proc.stderr
    assert f"python launch.py --engine sambert --model {local}" in proc.stderr


def test_emotions_option_through_launch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    folder = make_folder(tmp_path, voices=("my_voice",))
    root = Path(__file__).resolve().parent.parent
    listed = subprocess.run([sys.executable, "launch.py", "--engine", "sambert", "--model", str(folder), "--device", "cpu",
                             "--emotions", "my_voice=happy,sad", "--list-speakers"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "emotions (trained): neutral, happy, sad" in listed.stdout
    bad = subprocess.run([sys.executable, "launch.py", "--engine", "sambert", "--model", str(folder),
                          "--emotions", "my_voice=happy,furious", "--list-speakers"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "'furious' is not a KAN-TTS emotion category" in bad.stderr
