"""The modelscope engine at its boundary. The ModelScope hub model cannot be reached from CI, so a fake pipeline
(tests/fixtures/modelscope_fake.py) stands in for it; the real pipeline runs only where kantts and ttsfrd are installed."""
from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from app.engines import create_engine
from app.engines.base import NEUTRAL, EngineBase, Utterance
from app.engines.modelscope.deps import INSTALL_COMMAND, missing_dependencies, preflight, restore_scipy_kaiser
from app.engines.modelscope.emotion import apply_emotion
from app.engines.modelscope.engine import ModelScopeEngine
from app.errors import EngineUnavailableError, TTSInputError
from app.settings import BatchSettings, EngineSettings, ServeSettings
from tests.fixtures.modelscope_fake import (
    UNIT_SAMPLES, FakeFrontend, FakeLingUnit, FakePipelineFactory, int16_wav, make_model_folder,
)

REPO = Path(__file__).resolve().parents[1]
# One sentence as ttsfrd really writes it (a public KAN-TTS device example): breaks carry emotion_none.
REAL_FRONTEND_LINE = (
    "{b_c$tone3$s_begin$word_begin$emotion_neutral$F7} {ei_c$tone3$s_end$word_middle$emotion_neutral$F7} "
    "{#1$tone_none$s_none$word_none$emotion_none$F7} {z_c$tone3$s_begin$word_begin$emotion_neutral$F7} "
    "{#4$tone_none$s_none$word_none$emotion_none$F7}"
)


def loaded_engine(tmp_path, factory=None, **load) -> tuple[ModelScopeEngine, FakePipelineFactory]:
    factory = factory or FakePipelineFactory()
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "model")), pipeline_factory=factory)
    engine.load(device="cpu", fp16=False, **load)
    return engine, factory


@pytest.fixture(autouse=True)
def _cpu_pipeline(monkeypatch):
    """The fake runs where the real pipeline would: here that is the CPU, whatever this machine has."""
    monkeypatch.setattr("app.engines.modelscope.engine.pipeline_device", lambda: "cpu")


# --- speakers, emotions and audio from a model folder ------------------------------------------------------
def test_speakers_and_emotions_come_from_the_model_folder(tmp_path):
    engine, _ = loaded_engine(tmp_path)
    assert isinstance(engine, EngineBase)
    assert engine.speakers == ("zhitian_emo", "zhiyan_emo", "zhizhe_emo", "zhibei_emo")  # voices.json order
    assert engine.default_speaker == "zhitian_emo"
    # The published voices offer what their model cards document (app/engines/sambert/emotions.py), as --engine sambert.
    assert engine.emotions_for("zhitian_emo") == (NEUTRAL, "happy", "angry", "sad", "fear", "hate", "surprise")
    assert engine.emotions_for("zhizhe_emo") == (NEUTRAL, "happy", "angry", "sad", "fear", "calm", "serious")
    assert engine.emotions == (NEUTRAL, "happy", "angry", "sad", "fear", "hate", "surprise", "arousal", "calm", "serious")
    assert any("'missing_voice'" in note and "skipped" in note for note in engine.notes)
    assert engine.max_batch_size == 1
    assert engine.fp16_supported is False and engine.precision.startswith("fp32")


def test_both_sambert_engines_share_one_reader_and_emotion_rule(tmp_path):
    from app.engines.sambert.engine import SambertEngine

    folder = make_model_folder(tmp_path / "shared", voices=("zhibei_emo", "my_voice"))
    pipeline_engine, _ = ModelScopeEngine(model=str(folder), pipeline_factory=FakePipelineFactory(),
                                          emotions={"my_voice": ("happy",)}), None
    pipeline_engine.load(device="cpu", fp16=False)
    native = SambertEngine(model=str(folder), emotions={"my_voice": ("happy",)})  # its catalog, before load
    for speaker in ("zhibei_emo", "my_voice"):
        assert pipeline_engine.emotions_for(speaker) == native.emotions_for(speaker)
    assert pipeline_engine.emotions_for("my_voice") == (NEUTRAL, "happy")


def test_a_voice_the_rule_knows_nothing_about_offers_neutral_and_says_how(tmp_path):
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "m", voices=("my_voice",))),
                              pipeline_factory=FakePipelineFactory())
    engine.load(device="cpu", fp16=False)
    assert engine.emotions == (NEUTRAL,)
    assert any("--emotions my_voice=happy,sad" in note for note in engine.notes)


def test_loads_the_folder_once_and_warms_up_every_voice(tmp_path):
    engine, factory = loaded_engine(tmp_path)
    assert factory.folders == [str((tmp_path / "model").resolve())]  # absolute: modelscope never asks the hub
    assert [voice for _, voice in factory.pipe.calls] == list(engine.speakers)


def test_returns_float32_audio_at_16k_decoded_from_the_wav_bytes(tmp_path):
    engine, factory = loaded_engine(tmp_path)
    [audio] = engine.synthesize([Utterance("你好", "zhiyan_emo", NEUTRAL)])
    assert engine.sample_rate == 16000
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.abs(audio).max() <= 1.0
    assert len(audio) == 5 * UNIT_SAMPLES  # two characters of two units, plus the break
    _, symbols = factory.pipe.model.lines[-1]
    expected = factory.pipe.model.voices["zhiyan_emo"].forward(symbols)
    np.testing.assert_allclose(audio, expected, atol=1 / 32768)


def test_a_batch_runs_one_item_at_a_time_in_order(tmp_path):
    engine, factory = loaded_engine(tmp_path)
    before = len(factory.pipe.calls)
    out = engine.synthesize([Utterance("一", "zhitian_emo"), Utterance("二三", "zhibei_emo")])
    assert factory.pipe.calls[before:] == [("一", "zhitian_emo"), ("二三", "zhibei_emo")]
    assert [len(a) for a in out] == [3 * UNIT_SAMPLES, 5 * UNIT_SAMPLES]


# --- the emotion path -----------------------------------------------------------------------------------------
def test_apply_emotion_sets_pronounced_units_and_leaves_breaks_alone():
    happy, count = apply_emotion(REAL_FRONTEND_LINE, "happy")
    assert count == 3
    assert happy.count("$emotion_happy$") == 3 and happy.count("$emotion_none$") == 2
    assert "emotion_neutral" not in happy
    assert apply_emotion(REAL_FRONTEND_LINE, NEUTRAL) == (REAL_FRONTEND_LINE, 3)


def test_emotion_reaches_the_units_the_acoustic_model_reads(tmp_path):
    engine, factory = loaded_engine(tmp_path)
    lines = factory.pipe.model.lines
    [neutral] = engine.synthesize([Utterance("你好", "zhitian_emo", NEUTRAL)])
    assert "emotion_neutral" in lines[-1][1] and "emotion_sad" not in lines[-1][1]
    [sad] = engine.synthesize([Utterance("你好", "zhitian_emo", "sad")])
    voice, symbols = lines[-1]
    assert voice == "zhitian_emo" and symbols.count("$emotion_sad$") == 4 and "emotion_neutral" not in symbols
    assert "$emotion_none$" in symbols  # the break keeps what the frontend wrote
    assert not np.allclose(neutral, sad)  # the fake's "acoustic model" embeds the category, as Sambert's does
    [again] = engine.synthesize([Utterance("你好", "zhitian_emo", NEUTRAL)])
    np.testing.assert_array_equal(again, neutral)  # the emotion does not leak into the next call


def test_emotions_the_voice_cannot_encode_are_not_offered(tmp_path):
    no_fear = FakeLingUnit(("emotion_none", "emotion_neutral", "emotion_happy", "emotion_surprise"))
    engine, _ = loaded_engine(tmp_path, FakePipelineFactory(ling_units={"zhiyan_emo": no_fear}))
    assert engine.emotions_for("zhiyan_emo") == (NEUTRAL, "happy", "surprise")


def test_a_frontend_without_emotion_units_offers_neutral_only_and_says_so(tmp_path):
    engine, _ = loaded_engine(tmp_path, FakePipelineFactory(frontend=FakeFrontend(emotion_field=False)))
    assert engine.emotions == (NEUTRAL,)
    assert any("neutral only" in note for note in engine.notes)


def test_a_pipeline_without_a_reachable_frontend_offers_neutral_only_and_says_so(tmp_path):
    engine, factory = loaded_engine(tmp_path, FakePipelineFactory(frontend_attr="_text_frontend"))
    assert engine.emotions == (NEUTRAL,)
    assert any("neutral only" in note for note in engine.notes)
    engine.synthesize([Utterance("你好", "zhitian_emo", NEUTRAL)])
    assert "emotion_neutral" in factory.pipe.model.lines[-1][1]


# --- clear errors, before any request ----------------------------------------------------------------------------
def test_unknown_speaker_or_emotion_is_refused_before_anything_runs(tmp_path):
    from app.service import TTSService

    engine, factory = loaded_engine(tmp_path)
    before = len(factory.pipe.calls)
    with pytest.raises(TTSInputError, match="unknown speaker 'xiaoyun'.*zhitian_emo"):
        engine.check("xiaoyun", "neutral")
    with TTSService(engine).start(warmup=False) as service:
        with pytest.raises(TTSInputError, match="speaker 'zhizhe_emo' has no emotion 'hate'; choose one of: neutral, happy"):
            service.submit("你好", "zhizhe_emo", "hate")
    assert len(factory.pipe.calls) == before


def test_a_missing_model_folder_names_the_download_command(tmp_path):
    missing = tmp_path / "models" / "sambert"
    engine = ModelScopeEngine(model=str(missing), pipeline_factory=FakePipelineFactory())
    with pytest.raises(EngineUnavailableError) as err:
        engine.load(device="cpu", fp16=False)
    assert f"modelscope download --model damo/speech_sambert-hifigan_tts_zh-cn_16k --local_dir {missing}" in str(err.value)


def test_a_folder_that_is_not_a_modelscope_model_says_what_is_missing(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    (folder / "voices" / "voices.json").unlink()
    engine = ModelScopeEngine(model=str(folder), pipeline_factory=FakePipelineFactory())
    with pytest.raises(EngineUnavailableError, match="neither voices/voices.json nor voices.zip"):
        engine.load(device="cpu", fp16=False)
    (folder / "configuration.json").unlink()
    with pytest.raises(EngineUnavailableError, match="configuration.json is missing"):
        engine.load(device="cpu", fp16=False)


def test_a_hub_id_offline_and_not_cached_names_the_download_command(tmp_path):
    def offline(model_id):
        raise ConnectionError("Failed to resolve 'modelscope.cn'")

    factory = FakePipelineFactory()
    engine = ModelScopeEngine(model="damo/speech_sambert-hifigan_tts_zh-cn_16k", pipeline_factory=factory, downloader=offline)
    with pytest.raises(EngineUnavailableError) as err:
        engine.load(device="cpu", fp16=False)
    message = str(err.value)
    assert "ConnectionError" in message
    assert "modelscope download --model damo/speech_sambert-hifigan_tts_zh-cn_16k --local_dir ./models/speech_sambert" in message
    assert "--engine modelscope --model ./models/speech_sambert-hifigan_tts_zh-cn_16k" in message
    assert factory.folders == []


def test_a_hub_id_resolves_through_the_downloader(tmp_path):
    folder = make_model_folder(tmp_path / "cache" / "damo" / "speech_sambert-hifigan_tts_zh-cn_16k")
    factory = FakePipelineFactory()
    engine = ModelScopeEngine(model="damo/speech_sambert-hifigan_tts_zh-cn_16k", pipeline_factory=factory,
                              downloader=lambda model_id: str(folder))
    engine.load(device="cpu", fp16=False)
    assert factory.folders == [str(folder.resolve())] and engine.speakers[0] == "zhitian_emo"


def test_a_pipeline_that_cannot_be_built_or_warmed_up_fails_at_load_with_the_cause(tmp_path):
    def broken(folder):
        raise ImportError("No module named 'addict'")

    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "a")), pipeline_factory=broken)
    with pytest.raises(EngineUnavailableError, match="ImportError: No module named 'addict'.*requirements-sambert.txt"):
        engine.load(device="cpu", fp16=False)

    def old_checkpoint(folder):
        pipe = FakePipelineFactory()(folder)
        pipe.model.voices["zhiyan_emo"].forward = lambda symbols: (_ for _ in ()).throw(
            RuntimeError("Weights only load failed ... set weights_only=False"))
        return pipe

    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "b")), pipeline_factory=old_checkpoint)
    with pytest.raises(EngineUnavailableError, match="loading voice 'zhiyan_emo'.*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"):
        engine.load(device="cpu", fp16=False)
    assert not engine.loaded


def test_a_device_the_pipeline_will_not_use_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("app.engines.modelscope.engine.pipeline_device", lambda: "cuda:0")
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "m")), pipeline_factory=FakePipelineFactory())
    with pytest.raises(EngineUnavailableError, match="CUDA_VISIBLE_DEVICES= "):
        engine.load(device="cpu", fp16=False)


@pytest.mark.requires_cuda
def test_on_cuda_the_engine_reports_the_gpu_the_pipeline_will_use(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real pipeline_device(), as modelscope's Voice decides it
    factory = FakePipelineFactory()
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "a")), pipeline_factory=factory)
    engine.load(device="auto", fp16=False)
    assert engine.device == "cuda:0"
    refused = ModelScopeEngine(model=str(make_model_folder(tmp_path / "b")), pipeline_factory=factory)
    with pytest.raises(EngineUnavailableError, match="runs on cuda:0 here.*CUDA_VISIBLE_DEVICES= "):
        refused.load(device="cpu", fp16=False)


def test_fp16_is_refused_truthfully_with_a_warning(tmp_path):
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "m")), pipeline_factory=FakePipelineFactory())
    with pytest.warns(RuntimeWarning, match="FP32"):
        engine.load(device="cpu", fp16=True)
    with pytest.warns(RuntimeWarning, match="FP32"):
        assert engine.set_precision(True) == engine.precision
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.set_precision(False).startswith("fp32")


# --- without modelscope's audio extras (this machine) ---------------------------------------------------------
needs_missing_deps = pytest.mark.skipif(not missing_dependencies(), reason="kantts and ttsfrd are installed here")


@needs_missing_deps
def test_without_the_audio_extras_load_explains_the_fix(tmp_path):
    engine = create_engine(EngineSettings(name="modelscope", model=str(make_model_folder(tmp_path / "m"))))
    assert engine.model != ModelScopeEngine.DEFAULT_MODEL
    with pytest.raises(EngineUnavailableError) as err:
        engine.load()
    message = str(err.value)
    assert INSTALL_COMMAND in message and "pip install -r requirements-sambert.txt" in message
    assert "python3.10 -m venv" in message
    with pytest.raises(EngineUnavailableError):
        preflight()


def test_placeholder_packages_from_pypi_are_recognised(tmp_path, monkeypatch):
    for name in ("kantts", "ttsfrd"):  # what PyPI's kantts 0.1.0 and ttsfrd 0.1.0 install
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f'def hello():\n    return "Hello from {name}"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("kantts", "ttsfrd"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    problems = "\n".join(missing_dependencies())
    assert "kantts" in problems and "placeholder" in problems
    if sys.version_info < (3, 11):
        assert "ttsfrd is PyPI's empty placeholder" in problems


def test_the_kaiser_alias_kantts_imports_is_restored_on_new_scipy(monkeypatch):
    scipy, signal, windows = (types.ModuleType(n) for n in ("scipy", "scipy.signal", "scipy.signal.windows"))
    windows.kaiser = lambda m, beta: np.kaiser(m, beta)
    scipy.signal, signal.windows = signal, windows
    for module in (scipy, signal, windows):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    restore_scipy_kaiser()
    assert signal.kaiser is windows.kaiser


def test_the_registry_builds_it_cheaply_without_importing_modelscope():
    code = (
        "import sys; from app.engines import create_engine; from app.settings import EngineSettings;"
        "e = create_engine(EngineSettings(name='modelscope')); print(e.model, 'modelscope' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["damo/speech_sambert-hifigan_tts_zh-cn_16k", "False"]


@needs_missing_deps
@pytest.mark.parametrize("mode", [[], ["--say", "你好。"]], ids=["serve", "say"])
def test_launch_exits_with_the_message_not_a_traceback(tmp_path, mode):
    folder = make_model_folder(tmp_path / "m")
    out = subprocess.run([sys.executable, "launch.py", "--engine", "modelscope", "--model", str(folder), *mode],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    assert "Traceback" not in printed
    assert "requirements-sambert.txt" in printed and "ttsfrd==0.2.1" in printed


# --- through the service, unchanged ---------------------------------------------------------------------------
def test_end_to_end_through_the_service(tmp_path):
    from app.service import TTSService

    engine, factory = loaded_engine(tmp_path)
    svc = TTSService(engine, batch=BatchSettings(fp16=False, max_batch_size=8), serve=ServeSettings())
    svc.start()
    try:
        result = svc.submit("今天天气很好。我们出去走走吧。", "zhitian_emo", "happy")
        with pytest.raises(TTSInputError, match="unknown emotion"):
            svc.submit("你好。", "zhitian_emo", "jealousy")
    finally:
        svc.close()
    assert result.sample_rate == 16000 and result.audio.dtype == np.float32
    assert result.timings.sentences == 2 and set(result.timings.batch_sizes) == {1}  # no pretend batching
    happy_lines = [s for v, s in factory.pipe.model.lines[-2:]]
    assert all("$emotion_happy$" in s and "emotion_neutral" not in s for s in happy_lines)
    assert svc.health()["precision"].startswith("fp32")


def test_int16_wav_matches_what_the_pipeline_writes():
    """modelscope writes 32768 * audio as int16 PCM (sambert_hifi.py + ndarray_pcm_to_wav); the fake does the same."""
    from app.audio import wav_bytes_to_float32

    audio = np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32)
    decoded, rate = wav_bytes_to_float32(int16_wav(audio, 16000))
    assert rate == 16000
    np.testing.assert_allclose(decoded, audio, atol=1 / 32768)
