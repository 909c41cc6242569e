"""Stage spans: the core (marks, records, the ring), real batches of every engine, the per-request split."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app import spans
from app.engines.base import Utterance
from app.service import TTSService
from app.settings import BatchSettings
from app.spans import OTHER, REQUEST_STAGES, SpanRing
from tests.fixtures.fake_engine import FakeEngine

EMBEDDED_STAGES = ["frontend", "encoder", "decoder", "postnet", "vocoder"]
TEXTS = ["春天来了，花儿开了。", "我们一起去公园散步吧。", "今天下雨了。", "小鸟在唱歌。"]


# --- the core ------------------------------------------------------------------------------------------------------
def test_marks_outside_a_batch_do_nothing():
    spans.mark("decoder")
    spans.annotate(steps=3)  # no recorder on this thread: nothing to fail, nothing recorded
    ring = SpanRing()
    assert ring.records() == []


def test_marks_tile_the_call_and_counts_land_on_their_stage():
    ring = SpanRing()
    with ring.batch(7, 2):
        time.sleep(0.01)  # before the first mark: OTHER
        spans.mark("encoder")
        time.sleep(0.02)
        spans.mark("decoder")
        spans.annotate(steps=5)
        time.sleep(0.03)
        spans.annotate(steps=1, frames=9)
        spans.mark("vocoder")
        spans.annotate("decoder", frames=3)  # by name, after the stage ended
        time.sleep(0.01)
    (record,) = ring.records()
    assert (record.batch_id, record.size, record.ok, record.clock) == (7, 2, True, "perf_counter")
    assert [s.stage for s in record.spans] == ["encoder", "decoder", "vocoder"]
    decoder = record.spans[1]
    assert (decoder.steps, decoder.frames) == (6, 12) and (record.steps, record.frames) == (6, 12)
    for before, after in zip(record.spans, record.spans[1:]):  # contiguous: each starts where the one before ended
        assert after.offset_s == pytest.approx(before.offset_s + before.duration_s)
    assert record.spans[0].offset_s == pytest.approx(0.01, abs=0.008)
    assert decoder.duration_s == pytest.approx(0.03, abs=0.015)
    totals = record.totals()
    assert sum(totals.values()) == pytest.approx(record.wall_s) and totals[OTHER] == pytest.approx(0.01, abs=0.008)
    assert ring.get(7) is record


def test_the_ring_is_bounded_and_forgets_evicted_ids():
    ring = SpanRing(capacity=3)
    for i in range(5):
        with ring.batch(i, 1):
            spans.mark("decoder")
    assert [r.batch_id for r in ring.records()] == [2, 3, 4]
    assert ring.get(1) is None and ring.get(4) is not None
    assert [r.batch_id for r in ring.records(since=ring.get(2).t)] == [3, 4]


def test_a_failed_call_is_recorded_and_watchers_see_every_call():
    ring, seen = SpanRing(), []
    watcher = lambda record: seen.append((record.batch_id, record.ok))  # noqa: E731
    ring.watch(watcher)
    with pytest.raises(ValueError):
        with ring.batch(0, 1):
            spans.mark("encoder")
            raise ValueError("boom")
    ring.unwatch(watcher)
    with ring.batch(1, 1):
        pass
    assert seen == [(0, False)]
    assert [r.ok for r in ring.records()] == [False, True] and ring.records()[1].spans == ()


class FakeCudaEvent:
    """Stands in for torch.cuda.Event (no GPU here): a timestamp at record, the CUDA API's ms differences."""

    synced: list = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t = None

    def record(self, stream) -> None:
        assert stream == "engine stream"  # recorded on the engine's stream, never the default of another device
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        FakeCudaEvent.synced.append(self)

    def elapsed_time(self, end: "FakeCudaEvent") -> float:
        return (end.t - self.t) * 1000.0


def test_on_cuda_durations_come_from_events_read_once_the_call_is_over(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "Event", FakeCudaEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: "engine stream" if str(device) == "cuda:1" else None)
    FakeCudaEvent.synced = []
    ring = SpanRing()
    with ring.batch(0, 4, device="cuda:1"):
        spans.mark("encoder")
        time.sleep(0.01)
        spans.mark("decoder")
        time.sleep(0.02)
    (record,) = ring.records()
    assert record.clock == "cuda events" and [s.stage for s in record.spans] == ["encoder", "decoder"]
    assert record.spans[1].duration_s == pytest.approx(0.02, abs=0.01)
    assert len(FakeCudaEvent.synced) == 1  # one wait, on the last event, after the engine's own final sync


# --- real engines --------------------------------------------------------------------------------------------------
def test_a_real_embedded_batch_is_split_into_its_stages_tiling_its_wall_time(engine):
    svc = TTSService(engine, BatchSettings(max_batch_size=4, max_wait_ms=200)).start(warmup=False)
    try:
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            results = list(pool.map(lambda t: svc.submit(t, "Aijia"), TEXTS))
        batch = next(b for b in svc.batch_log if b.size > 1)  # the batcher's own timing of the engine call
        record = next(r for r in svc.span_log if r.size == batch.size)
    finally:
        svc.close()
    assert [s.stage for s in record.spans] == EMBEDDED_STAGES  # all present, in order
    assert all(s.duration_s >= 0 for s in record.spans)
    assert sum(s.duration_s for s in record.spans) == pytest.approx(batch.compute_s, rel=0.10)
    decoder = record.spans[2]
    assert decoder.steps > 50 and decoder.frames > decoder.steps  # several items decoded per step
    assert decoder.duration_s > 0 and record.spans[4].duration_s > 0
    # the request's split carries its batch's stages, and its own frontend, queue wait and joining
    timings = results[0].timings
    assert set(timings.stages) == set(REQUEST_STAGES)
    for result in results:  # the stages after the engine's symbol conversion are (nearly) all of its engine calls
        inside = sum(result.timings.stages[s] for s in (*EMBEDDED_STAGES[1:], OTHER))
        assert 0.9 * result.timings.compute_s <= inside <= result.timings.compute_s * 1.01
    assert timings.stages["frontend"] > 0 and timings.stages["audio"] > 0
    assert timings.stages["queue"] == pytest.approx(timings.queue_wait_s)
    assert "; stages " in timings.summary() and f"decoder {timings.stages['decoder']:.2f}" in timings.summary()


def test_decoded_frames_are_what_the_vocoder_turned_into_audio(engine):
    ring = SpanRing()
    utts = [Utterance(t, "Aijia", seed=i) for i, t in enumerate(TEXTS[:3])]
    with ring.batch(0, len(utts)):
        traced = engine.synthesize(utts)
    plain = engine.synthesize(utts)  # no recorder: marks are no-ops
    (record,) = ring.records()
    assert record.frames * 256 == sum(len(a) for a in traced)  # MelGAN: 256 samples per frame
    for a, b in zip(traced, plain):  # recording changes nothing in the audio
        np.testing.assert_array_equal(a, b)


def test_health_and_request_log_carry_the_split():
    svc = TTSService(FakeEngine(delay_s=0.02), BatchSettings(max_batch_size=4, max_wait_ms=5)).start(warmup=False)
    try:
        svc.submit("第一句。第二句。", "alice")
        health = svc.health()["stages"]
    finally:
        svc.close()
    assert health["window_requests"] == 1 and set(health["last_request_s"]) == set(REQUEST_STAGES)
    # the fake marks no stage: its whole engine call is OTHER, and the shares add up to one
    last = health["last_request_s"]
    assert last[OTHER] >= 0.02 and health["window_share"][OTHER] == pytest.approx(last[OTHER] / sum(last.values()), abs=1e-3)
    assert sum(health["window_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert svc.request_log[-1].stages == pytest.approx(health["last_request_s"], abs=1e-4)


def test_sambert_batches_report_their_stages(tmp_path):
    import warnings

    import torch

    from app.engines.sambert.engine import SambertEngine
    from tests.fixtures.sambert_writer import make_folder

    eng = SambertEngine(model=str(make_folder(tmp_path, voices=("zhitian_emo",), speakers=("F7",))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eng.load("cpu", fp16=False)
    ring = SpanRing()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ring.batch(0, 2):
            out = eng.synthesize([Utterance("今天天气很好。", "zhitian_emo"), Utterance("好。", "zhitian_emo")])
        hop = eng._voices["zhitian_emo"].hop_samples  # samples per mel frame
    finally:
        torch.set_num_threads(threads)
        eng.unload()
    (record,) = ring.records()
    assert [s.stage for s in record.spans] == EMBEDDED_STAGES and all(s.duration_s >= 0 for s in record.spans)
    assert sum(s.duration_s for s in record.spans) == pytest.approx(record.wall_s, rel=0.10)
    assert record.spans[2].steps > 0 and record.frames * hop == sum(len(a) for a in out)


def test_the_modelscope_pipeline_is_one_stage(tmp_path, monkeypatch):
    from app.engines.modelscope.engine import ModelScopeEngine
    from tests.fixtures.modelscope_fake import FakePipelineFactory, make_model_folder

    monkeypatch.setattr("app.engines.modelscope.engine.pipeline_device", lambda: "cpu")  # the fake runs on the CPU
    engine = ModelScopeEngine(model=str(make_model_folder(tmp_path / "model")), pipeline_factory=FakePipelineFactory())
    engine.load(device="cpu", fp16=False)
    ring = SpanRing()
    with ring.batch(0, 1):
        engine.synthesize([Utterance("一", "zhitian_emo")])
    assert [s.stage for s in ring.records()[0].spans] == ["pipeline"]


@pytest.mark.requires_cuda
def test_cuda_spans_come_from_events_and_tile_the_batch(cuda_engine):
    svc = TTSService(cuda_engine, BatchSettings(max_batch_size=4, max_wait_ms=100, cuda_graphs=False)).start(warmup=False)
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda t: svc.submit(t, "Aijia"), ["你好。", "谢谢。", "今天天气很好。", "我们一起去公园散步吧。"]))
        batch = svc.batch_log[-1]
        record = svc.span_log[-1]
    finally:
        svc.close()
    assert record.clock == "cuda events" and [s.stage for s in record.spans] == EMBEDDED_STAGES
    assert all(s.duration_s >= 0 for s in record.spans)
    assert sum(s.duration_s for s in record.spans) == pytest.approx(batch.compute_s, rel=0.10)
