"""The static-shape decoders (the path CUDA graphs capture) against the dynamic loop, on CPU without capture.

On CPU the static path runs the very chunk code a graph captures, eagerly. Where a test needs the engine to believe it
can capture (to exercise set_cuda_graphs, the service switch and the fallback), it stands in for the GPU at that one
boundary: tests/fixtures/capture_sim.py runs every warm-up eagerly in build order, as CUDA does, and replays by running
the step; or `capture` raises like an out-of-memory capture would. CUDA tests at the end capture for real.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.engines import cuda_graphs
from app.engines.base import Utterance
from app.engines.embedded.dropout import item_keys
from app.engines.embedded.static_decoder import CHUNK_STEPS
from app.engines.sambert.folder import load_model_folder
from app.engines.sambert.runtime import SambertVoice, SymbolItem
from app.service import TTSService
from app.settings import BatchSettings, ServeSettings
from tests.fixtures.capture_sim import simulate_capture, small_embedded_static
from tests.fixtures.sambert_writer import make_folder
from tests.test_engine_embedded import utterances
from tests.test_sambert_batch import BATCH_TOLERANCE, random_symbols

MEL_TOLERANCE = 2e-2  # as batched vs alone: other matmul shapes round differently over hundreds of frames (~3e-4 seen)


@pytest.fixture(scope="module")
def dynamic_alone(engine):
    """Each of five utterances alone through the dynamic loop: (mel, stopped)."""
    return [tuple(x[0] for x in engine.synthesize_mels([u])) for u in utterances(5)]


@pytest.fixture
def static_engine(engine):
    """The session engine decoding with its static path (no capture on CPU); the dynamic loop again afterwards."""
    engine.set_static_decoding(True)
    yield engine
    engine.set_static_decoding(False)


def assert_same_decoding(reference, mels, stopped_flags):
    for i, ((ref, ref_stopped), mel, stopped) in enumerate(zip(reference, mels, stopped_flags)):
        assert mel.shape == ref.shape, f"item {i}: {mel.shape[1]} frames vs {ref.shape[1]} (dynamic)"
        assert stopped == ref_stopped
        gap = float((mel - ref).abs().max())
        assert gap < MEL_TOLERANCE, f"item {i}: max mel diff {gap:.2e}"


@pytest.mark.parametrize("n", [1, 3, 5])  # 3 and 5 are padded to batch buckets 4 and 8
def test_embedded_static_equals_dynamic_one_at_a_time(static_engine, dynamic_alone, n):
    mels, stopped = static_engine.synthesize_mels(utterances(n))
    assert_same_decoding(dynamic_alone[:n], mels, stopped)
    if n == 5:  # finished items stay in the batch, masked: item 0 (51 frames) rides along ~30 chunks with item 3 (538)
        assert mels[0].shape[1] + 2 * CHUNK_STEPS < mels[3].shape[1]


def test_embedded_static_waveforms_match_dynamic(engine, static_engine):
    utts = [utterances(5)[i] for i in (0, 4)]  # short ones: the vocoder is the slow part on CPU
    static = static_engine.synthesize(utts)
    engine.set_static_decoding(False)
    dynamic = engine.synthesize(utts)
    for a, b in zip(dynamic, static):
        assert len(a) == len(b)
        assert np.corrcoef(a, b)[0, 1] > 0.999


def test_embedded_length_guard_holds_on_the_static_path(static_engine):
    # a limit below the gate's frame: the item ends at its limit, flagged as not stopped, like the dynamic loop
    model, decoder = static_engine._acoustic, static_engine._static
    ids = torch.tensor([static_engine.symbol_ids("今天天气很好，我们一起去公园散步吧。")])
    lengths = torch.tensor([ids.shape[1]])
    speakers = torch.tensor([[0.1] * 32])
    keys = item_keys([7], "cpu")
    with torch.no_grad():
        memory = model.encode(ids, lengths, speakers)
        mel, frames, stopped = decoder.decode(memory, model.memory_layer(memory), lengths, keys, [37])
        dyn_mel, dyn_frames, dyn_stopped = model._decode_dynamic(memory, model.memory_layer(memory), lengths, keys, [37], 1)
    assert frames == dyn_frames == [37] and stopped == dyn_stopped == [False]
    assert torch.allclose(mel, dyn_mel, atol=1e-4)


@pytest.fixture
def eager_capture(engine, monkeypatch):
    """Stand in for the GPU (simulated capture: warm-ups run, replay runs the step), with small buckets only."""
    small_embedded_static(monkeypatch, engine)
    return simulate_capture(monkeypatch)


def test_embedded_graphs_build_under_simulated_capture_and_equal_dynamic(engine, eager_capture, dynamic_alone):
    try:
        assert engine.set_cuda_graphs(True), engine.notes
        assert eager_capture.captures == 4 and eager_capture.warm_ups == 4 * cuda_graphs.WARMUP_RUNS  # 2 batch x 2 lengths
        replays = engine._static.graphs.replays
        mels, stopped = engine.synthesize_mels(utterances(2))
        assert engine._static.graphs.replays > replays  # decoded by the "captured" chunks, not the dynamic fallback
    finally:
        engine.set_cuda_graphs(False)
    assert_same_decoding(dynamic_alone[:2], mels, stopped)


def test_capture_failure_falls_back_to_the_dynamic_loop_with_a_note(engine, eager_capture, monkeypatch):
    tries = []

    def out_of_memory(step, pool):
        tries.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated at capture)")

    monkeypatch.setattr(cuda_graphs, "capture", out_of_memory)
    svc = TTSService(engine, BatchSettings(max_batch_size=4, cuda_graphs=True)).start(warmup=False)
    try:
        assert svc.settings.cuda_graphs is False and engine.cuda_graphs is False and engine._static is None
        health = svc.health()
        assert health["cuda_graphs"] is False and "CUDA graph capture failed (OutOfMemoryError" in health["note"]
        result = svc.submit("我们一起去公园散步吧。", "Aijia")  # the app keeps answering, on the dynamic loop
        assert result.audio.size > 0 and np.isfinite(result.audio).all()
        tried = len(tries)
        assert svc.apply_settings(max_wait_ms=5).cuda_graphs is False and len(tries) == tried  # an unrelated change does not retry
        assert svc.apply_settings(cuda_graphs=True).cuda_graphs is False and len(tries) > tried  # asking again does
    finally:
        svc.close()
        engine.set_cuda_graphs(False)
    assert not any("CUDA graph" in n for n in engine.notes)  # turning graphs off clears the note


def submit_together(svc: TTSService, jobs: list[tuple[str, str]], while_running=lambda: None) -> tuple[list, object]:
    """Every job submitted at the same instant from its own thread; while_running() runs meanwhile. Returns the
    (job, result) pairs and what while_running returned."""
    barrier = threading.Barrier(len(jobs) + 1)

    def call(job):
        barrier.wait()
        return job, svc.submit(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(call, job) for job in jobs]
        barrier.wait()
        during = while_running()
        return [f.result(300) for f in futures], during


def assert_own_audio(alone: dict, results: list) -> None:
    assert sorted(job for job, _ in results) == sorted(alone)  # none missing, none twice
    for job, res in results:
        ref = alone[job]
        assert abs(len(ref) - len(res.audio)) <= 256, job
        k = min(len(ref), len(res.audio))
        assert np.corrcoef(ref[:k], res.audio[:k])[0, 1] > 0.99, job


def test_switching_graphs_mid_load_loses_nothing(engine, eager_capture):
    phrases = ["春天来了", "花儿开了", "小鸟在唱歌", "我们去上学", "今天下雨了", "请关好窗户", "电脑很好用", "火车开得很快",
               "妈妈做晚饭", "爸爸在看书", "猫在睡觉", "狗在院子里", "天空很蓝", "大海很宽", "山上有雪", "河水很清"]
    jobs = [(p, ["Aijia", "Xiaoxue"][i % 2]) for i, p in enumerate(phrases)]
    svc = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=30, cuda_graphs=False), ServeSettings()).start(warmup=False)
    try:
        alone = {job: svc.submit(*job).audio for job in jobs}  # dynamic loop, one at a time
        switch = lambda: [svc.apply_settings(cuda_graphs=on).cuda_graphs for on in (True, False, True)]  # noqa: E731
        results, switched = submit_together(svc, jobs, switch)
        assert switched == [True, False, True] and svc.health()["cuda_graphs"] is True
        assert svc.health()["cuda_graphs_detail"].endswith("lengths)")  # what the panel shows: count, MiB, buckets
    finally:
        svc.close()
        engine.set_cuda_graphs(False)
    assert_own_audio(alone, results)


# --- Sambert ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    torch.set_num_threads(1)
    return SambertVoice(load_model_folder(make_folder(tmp_path_factory.mktemp("static"))).voices["test_voice"])


@pytest.fixture(scope="module")
def sambert_items():
    rng = np.random.default_rng(11)
    spec = [(2, 1.0, "emotion_neutral"), (60, 1.0, "emotion_happy"), (15, 3.0, "emotion_sad"), (40, 0.4, "emotion_neutral"),
            (25, 1.0, "emotion_neutral")]
    return [SymbolItem(random_symbols(rng, n, emo), scale) for n, scale, emo in spec]


@pytest.mark.parametrize("n", [1, 3, 5])  # 3 and 5 are padded to batch buckets 4 and 8
def test_sambert_static_equals_dynamic_one_at_a_time(voice, sambert_items, n):
    alone = [voice.synthesize([item])[0] for item in sambert_items[:n]]
    voice.set_static_decoding(True)
    try:
        static = voice.synthesize(sambert_items[:n])
    finally:
        voice.set_static_decoding(False)
    for a, b in zip(alone, static):
        assert a.mel.shape == b.mel.shape
        np.testing.assert_array_equal(a.durations, b.durations)
        np.testing.assert_allclose(b.mel, a.mel, atol=BATCH_TOLERANCE, rtol=0)
        np.testing.assert_allclose(b.waveform, a.waveform, atol=BATCH_TOLERANCE, rtol=0)


def test_sambert_graphs_build_under_simulated_capture_and_equal_dynamic(voice, sambert_items, monkeypatch):
    # gpu-review point 1: the shared step index ran on across buckets' warm-ups (id=96 in a 64-step bucket) until
    # each bucket was reset before its warm-ups and before capture
    sim = simulate_capture(monkeypatch)
    items = sambert_items[:2]
    alone = [voice.synthesize([item])[0] for item in items]
    voice.max_batch = 2
    try:
        voice.set_static_decoding(True)
        assert voice.static.graphs.captured and sim.warm_ups == 8 * cuda_graphs.WARMUP_RUNS  # 2 batch x 4 step buckets
        together = voice.synthesize(items)
        assert voice.static.graphs.replays > 0
    finally:
        voice.set_static_decoding(False)
        voice.max_batch = 32
    for a, b in zip(alone, together):
        assert a.mel.shape == b.mel.shape
        np.testing.assert_allclose(b.mel, a.mel, atol=BATCH_TOLERANCE, rtol=0)


def test_sambert_long_batch_beyond_the_step_buckets_runs_dynamic(voice):
    from app.engines.sambert.static_decoder import STEP_BUCKETS

    voice.set_static_decoding(True)
    try:
        decoder = voice.acoustic.mel_decoder
        memory = torch.zeros(1, STEP_BUCKETS[-1] + 1, decoder.mel_dec.dec_in_proj.in_features - decoder.d_model)
        assert voice.static.decode(memory, torch.tensor([3]), torch.tensor([2])) is None  # the caller decodes dynamically
    finally:
        voice.set_static_decoding(False)


def test_sambert_real_size_static_equals_dynamic(tmp_path):
    voice = SambertVoice(load_model_folder(make_folder(tmp_path, size="real")).voices["test_voice"])
    rng = np.random.default_rng(3)
    items = [SymbolItem(random_symbols(rng, 3)), SymbolItem(random_symbols(rng, 12), 1.7)]
    dynamic = voice.synthesize(items)
    voice.max_batch = 2  # the real-size buffers for two buckets only: this is about shapes, not speed
    voice.set_static_decoding(True)
    for a, b in zip(dynamic, voice.synthesize(items)):
        np.testing.assert_allclose(b.mel, a.mel, atol=BATCH_TOLERANCE, rtol=0)


# --- CUDA: real capture ------------------------------------------------------------------------------------------
@pytest.mark.requires_cuda
def test_cuda_graphs_equal_eager_static_and_dynamic(cuda_engine, monkeypatch):
    utts = utterances(5)
    cuda_engine.set_precision(False)
    try:
        dynamic = cuda_engine.synthesize_mels(utts)
        assert cuda_engine.set_cuda_graphs(True) and "CUDA graphs captured" in cuda_engine.cuda_graphs_detail
        graphed = cuda_engine.synthesize_mels(utts)
        with monkeypatch.context() as m:  # the same static chunk, run eagerly on the GPU: replay must match it
            m.setattr(cuda_graphs, "capture_possible", lambda device: False)
            cuda_engine.set_static_decoding(True)
            eager = cuda_engine.synthesize_mels(utts)
        assert eager[1] == graphed[1]
        for e, g in zip(eager[0], graphed[0]):
            assert e.shape == g.shape and float((e - g).abs().max()) < 1e-5
        assert [m.shape[1] for m in dynamic[0]] == [m.shape[1] for m in graphed[0]]
        for d, g in zip(dynamic[0], graphed[0]):
            assert float((d - g).abs().max()) < 5e-2
    finally:
        cuda_engine.set_cuda_graphs(False)
        cuda_engine.set_precision(True)


@pytest.mark.requires_cuda
def test_cuda_32_concurrent_callers_own_audio_with_graphs_on(cuda_engine):
    from tests.test_service import MIXED_SPEAKERS, PHRASES

    svc = TTSService(cuda_engine, BatchSettings(max_batch_size=8, max_wait_ms=50, cuda_graphs=True)).start(warmup=False)
    try:
        assert svc.settings.cuda_graphs
        jobs = [(PHRASES[i], MIXED_SPEAKERS[i % 4]) for i in range(32)]
        alone = {job: svc.submit(*job).audio for job in jobs}
        results, _ = submit_together(svc, jobs)
        sizes = [r.size for r in svc.batch_log[len(jobs):]]
    finally:
        svc.close()
        cuda_engine.set_cuda_graphs(False)
    assert max(sizes) > 1
    assert_own_audio(alone, results)


@pytest.mark.requires_cuda
def test_cuda_sambert_graphs_equal_dynamic(tmp_path, sambert_items):
    voice = SambertVoice(load_model_folder(make_folder(tmp_path)).voices["test_voice"], "cuda")
    dynamic = voice.synthesize(sambert_items)
    voice.set_static_decoding(True)
    assert voice.static.graphs.captured
    graphed = voice.synthesize(sambert_items)
    for a, b in zip(dynamic, graphed):
        assert a.mel.shape == b.mel.shape
        assert np.abs(a.mel - b.mel).max() < 1e-3
