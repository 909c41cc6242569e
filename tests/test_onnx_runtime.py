"""ONNX Runtime as the vocoder's runtime (CPU provider): equal to torch on both vocoders, batched equal to one at a
time, switchable live under load, its cache checked (a corrupt or stale export is redone, never used), and every
failure leaves torch in force with a note."""
from __future__ import annotations

import json
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.engines import onnx_runtime
from app.engines.base import Utterance
from app.engines.onnx_runtime import OnnxUnavailableError, OrtPart
from app.service import TTSService
from app.settings import BatchSettings, ServeSettings
from profiling.sentences import sentence_list
from tests.fixtures.sambert_writer import make_folder

SENTENCES = sentence_list("engine")
SPEAKERS = ["Aijia", "biaobei", "Xiaoxue", "Aina"]


def utterances(n: int) -> list[Utterance]:
    return [Utterance(SENTENCES[i], SPEAKERS[i % 4], seed=200 + i) for i in range(n)]


@pytest.fixture(scope="module")
def ort_engine(engine, tmp_path_factory):
    """The session's embedded engine with its exported vocoder in a folder of this module's own."""
    engine.onnx_dir = str(tmp_path_factory.mktemp("onnx"))
    yield engine
    engine.set_runtime("torch")
    engine.onnx_dir = None


@pytest.fixture(scope="module")
def mels(ort_engine):
    """Real mels of four sentences (52 to hundreds of frames: one window and several)."""
    ort_engine.set_runtime("torch")
    with torch.inference_mode():
        return ort_engine.synthesize_mels(utterances(4))[0]


def test_melgan_on_onnx_runtime_equals_torch_on_the_real_weights(ort_engine, mels):
    vocoder = ort_engine._vocoder
    assert ort_engine.set_runtime("onnxruntime") == "onnxruntime"
    assert "embedded-melgan-fp32 on CPU" in ort_engine.runtime_detail and not any("ONNX" in n for n in ort_engine.notes)
    part = ort_engine._vocoder_ort
    assert part.probe_error <= 1e-4
    with torch.inference_mode():
        for rows in (1, 8):  # one window per call, and windows of several items in one call
            for mel, got in zip(mels, vocoder.vocode_many(mels, max_rows=rows, run=part)):
                whole = vocoder.vocode(mel)  # torch, the whole signal at once
                assert got.shape == whole.shape
                assert (got - whole).abs().max() < 1e-4


def test_batched_equals_one_at_a_time_on_onnx_runtime(ort_engine):
    assert ort_engine.set_runtime("onnxruntime") == "onnxruntime"
    utts = utterances(4)
    batched = ort_engine.synthesize(utts)
    for u, b in zip(utts, batched):
        a = ort_engine.synthesize([u])[0]
        k = min(len(a), len(b))
        assert abs(len(a) - len(b)) <= 256  # the decoder's batch rounding, as on torch (test_engine_embedded)
        assert np.corrcoef(a[:k], b[:k])[0, 1] > 0.999
    ort_engine.set_runtime("torch")
    for u, b in zip(utts, ort_engine.synthesize(utts)):  # same batch on torch: the runtime changes nothing audible
        assert len(b) == len(batched[utts.index(u)])
        assert np.abs(b - batched[utts.index(u)]).max() < 1e-3


@pytest.fixture()
def tiny_vocoder():
    """A Sambert HiFi-GAN generator with the random weights the folder writer gives (tiny shapes)."""
    from app.engines.sambert.vocoder import HifiGanGenerator
    from tests.fixtures.sambert_writer import FolderSpec, random_vocoder_state, vocoder_config
    from app.engines.sambert.vocoder import convert_generator_state

    config = vocoder_config(FolderSpec())
    module = HifiGanGenerator(config)
    module.load_state_dict(convert_generator_state(random_vocoder_state(config, seed=3, legacy=False)))
    return module.eval()


def test_sambert_hifigan_on_onnx_runtime_equals_torch_batched_and_alone(tmp_path):
    from app.engines.sambert.engine import SambertEngine

    folder = make_folder(tmp_path, voices=("zhitian_emo", "zhibei_emo"))
    engine = SambertEngine(model=str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        engine.load("cpu", fp16=False)
    engine.onnx_dir = str(tmp_path / "onnx")
    batch = [Utterance("今天天气很好。", "zhitian_emo"), Utterance("我们一起去公园散步吧，顺便买点水果。", "zhibei_emo", "happy"),
             Utterance("好。", "zhitian_emo", "sad")]
    on_torch = engine.synthesize(batch)
    assert engine.set_runtime("onnxruntime") == "onnxruntime", engine.notes
    assert "2 voices" in engine.runtime_detail and "hifigan-fp32 on CPU" in engine.runtime_detail
    together = engine.synthesize(batch)
    alone = [engine.synthesize([u])[0] for u in batch]
    for t, a, o in zip(on_torch, together, alone):
        assert t.shape == o.shape == a.shape
        assert np.abs(o - t).max() < 1e-4  # ORT against torch
        assert np.abs(o - a).max() < 1e-4  # batched against one at a time
    engine.unload()
    assert engine.runtime == "torch"


def test_an_export_is_reused_and_a_corrupt_or_stale_one_is_redone(tmp_path, tiny_vocoder):
    build = lambda: OrtPart.build(tiny_vocoder, "voc", tmp_path, 200, 80, probe_frames=30)  # noqa: E731
    mel = torch.randn(2, 80, 40) - 4
    with torch.no_grad():
        expected = tiny_vocoder(mel)
    first = build()
    assert first.export_s > 0 and (first(mel) - expected).abs().max() < 1e-4
    assert build().export_s == 0.0  # the cached file matches its record: used as is
    path = tmp_path / "voc-fp32.onnx"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["weights_sha256"] == onnx_runtime.weights_sha256(tiny_vocoder) and record["export_recipe"] == onnx_runtime.EXPORT_RECIPE

    data = bytearray(path.read_bytes())  # corrupt: one weight byte changed, the record untouched
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert onnx_runtime.cached_file_problem(path, record["weights_sha256"]).startswith("corrupt")
    again = build()
    assert again.export_s > 0 and (again(mel) - expected).abs().max() < 1e-4

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    assert build().export_s > 0

    with torch.no_grad():  # stale: the weights changed since the export
        tiny_vocoder.conv_post.bias.add_(0.5)
        changed = tiny_vocoder(mel)
    assert onnx_runtime.cached_file_problem(path, onnx_runtime.weights_sha256(tiny_vocoder)).startswith("stale")
    redone = build()
    assert redone.export_s > 0 and (redone(mel) - changed).abs().max() < 1e-4

    record = json.loads(path.with_suffix(".json").read_text())  # stale: an older export recipe
    path.with_suffix(".json").write_text(json.dumps(dict(record, export_recipe=onnx_runtime.EXPORT_RECIPE - 1)))
    assert build().export_s > 0


def test_bf16_has_no_onnx_path(tiny_vocoder, tmp_path):
    with pytest.raises(OnnxUnavailableError, match="bfloat16"):
        OrtPart.build(tiny_vocoder.to(torch.bfloat16), "voc", tmp_path, 200, 80)


def test_without_onnxruntime_torch_stays_with_the_install_hint(ort_engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert ort_engine.set_runtime("onnxruntime") == "torch"
    assert ort_engine._vocoder_ort is None and ort_engine.runtime_detail == ""
    assert any("not installed" in n and "requirements-onnx.txt" in n for n in ort_engine.notes)
    assert ort_engine.synthesize(utterances(1))[0].size > 0
    assert ort_engine.set_runtime("torch") == "torch" and not any("ONNX" in n for n in ort_engine.notes)


def test_a_failed_export_or_a_wrong_session_leaves_torch_with_a_note(engine, tmp_path, monkeypatch):
    before, engine.onnx_dir = engine.onnx_dir, str(tmp_path)  # an empty folder: the export must run
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("exporter broke")

        monkeypatch.setattr(onnx_runtime, "export", broken)
        assert engine.set_runtime("onnxruntime") == "torch"
        assert any("exporter broke" in n for n in engine.notes)
        monkeypatch.undo()

        real_call = OrtPart.__call__
        monkeypatch.setattr(OrtPart, "__call__", lambda self, mel: real_call(self, mel) * 1.01)  # a session that is off
        assert engine.set_runtime("onnxruntime") == "torch"
        assert any("differs from torch" in n for n in engine.notes) and engine._vocoder_ort is None
    finally:
        engine.set_runtime("torch")
        engine.onnx_dir = before


def test_a_failed_switch_is_retried_when_asked_again_not_by_unrelated_changes(ort_engine, tmp_path, monkeypatch):
    ort_engine.set_runtime("torch")
    before, ort_engine.onnx_dir = ort_engine.onnx_dir, str(tmp_path)  # nothing exported there yet
    tries = []

    def broken(*args, **kwargs):
        tries.append(1)
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(onnx_runtime, "export", broken)
    svc = TTSService(ort_engine, BatchSettings(max_batch_size=2, runtime="onnxruntime")).start(warmup=False)
    try:
        assert svc.settings.runtime == "torch" and len(tries) == 1  # asked at start: tried once, torch in force
        assert svc.apply_settings(max_wait_ms=5).runtime == "torch" and len(tries) == 1  # unrelated: no retry
        assert svc.apply_settings(runtime="onnxruntime").runtime == "torch" and len(tries) == 2  # asked again: retried
        monkeypatch.undo()
        assert svc.apply_settings(runtime="onnxruntime").runtime == "onnxruntime"  # and it works once the cause is gone
        assert svc.submit("你好。", "biaobei").audio.size > 0
    finally:
        svc.close()
        ort_engine.set_runtime("torch")
        ort_engine.onnx_dir = before


def test_switching_runtime_under_load_gives_every_caller_its_own_audio(ort_engine):
    ort_engine.set_runtime("torch")
    svc = TTSService(ort_engine, BatchSettings(max_batch_size=4, max_wait_ms=20), ServeSettings()).start(warmup=False)
    try:
        jobs = [(SENTENCES[i % len(SENTENCES)][: 12 + i], SPEAKERS[i % 4]) for i in range(12)]
        alone = {job: svc.submit(*job).audio for job in jobs}
        stop, switched = threading.Event(), []

        def toggle():
            for runtime in ("onnxruntime", "torch", "onnxruntime", "torch", "onnxruntime"):
                if stop.is_set():
                    break
                switched.append(svc.apply_settings(runtime=runtime).runtime)

        switcher = threading.Thread(target=toggle)
        switcher.start()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda job: (job, svc.submit(*job)), jobs + jobs))
        stop.set()
        switcher.join()
        assert "onnxruntime" in switched and "torch" in switched
        for job, res in results:
            ref = alone[job]
            assert abs(len(ref) - len(res.audio)) <= 256, job
            k = min(len(ref), len(res.audio))
            assert np.corrcoef(ref[:k], res.audio[:k])[0, 1] > 0.99, job
        health = svc.health()
        assert health["runtime"] == svc.settings.runtime == switched[-1]
        assert (health["runtime_detail"] is not None) == (switched[-1] == "onnxruntime")
    finally:
        svc.close()
        ort_engine.set_runtime("torch")


def test_the_runtime_setting_is_checked_and_engines_without_parts_say_so():
    from tests.fixtures.fake_engine import FakeEngine

    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        BatchSettings(runtime="tensorrt")
    fake = FakeEngine()
    fake.load("cpu", fp16=False)
    svc = TTSService(fake, BatchSettings(runtime="onnxruntime"), ServeSettings()).start(warmup=False)
    try:
        assert svc.settings.runtime == "torch"  # asked, not available: torch in force, with the reason
        assert any("not available for the fake engine" in n for n in fake.notes)
        with pytest.raises(ValueError, match="runtime"):
            svc.update_settings(runtime="onnx")
    finally:
        svc.close()


def test_the_comparison_has_a_runtime_axis_with_quality_columns(ort_engine):
    from profiling.compare import COLUMNS, make_grid, run_grid

    ort_engine.set_runtime("torch")
    svc = TTSService(ort_engine, BatchSettings(max_batch_size=2, max_wait_ms=20)).start(warmup=False)
    try:
        df = run_grid(svc, None, make_grid([False], [2], [False], [False], ["torch", "onnxruntime"]),
                      ["春天来了。", "花儿开了。", "小鸟在唱歌。"], concurrency=2, quality_texts=2)
        assert svc.settings.runtime == "torch"  # restored afterwards
    finally:
        svc.close()
    assert list(df.columns) == COLUMNS
    assert df["status"].tolist() == ["ok", "ok"] and df["runtime"].tolist() == ["torch", "onnxruntime"]
    assert df["setting"].str.endswith(("runtime=torch", "runtime=onnxruntime")).all()
    # against the FP32 torch reference (one at a time): the runtime adds nothing beyond what batching does
    assert (df["nonfinite_items"] == 0).all() and abs(df["mcd_db"].iloc[1] - df["mcd_db"].iloc[0]) < 0.05, df["mcd_db"]
