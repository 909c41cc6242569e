"""TTSService: no cross-talk under load, isolation of failures, busy queue, live settings, streaming, validation."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.audio import join_sentences
from app.engines.base import Utterance
from app.errors import QueueFullError, SynthesisError, TTSInputError
from app.service import TTSService
from app.settings import BatchSettings, ServeSettings
from profiling.sentences import sentence_list
from tests.fixtures.fake_engine import FakeEngine

PHRASES = sentence_list("phrases")  # 32 different short sentences for the real-engine cross-talk test
MIXED_SPEAKERS = ["Aijia", "biaobei", "Xiaoxue", "Aina"]


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def expected_audio(svc: TTSService, text: str, speaker: str) -> np.ndarray:
    """What the fake engine's service answer must be for a one-sentence text."""
    (item,) = svc.plan(text, speaker)
    return join_sentences([FakeEngine.expected(item)], svc.engine.sample_rate)


def test_no_cross_talk_with_32_concurrent_callers_real_engine(engine):
    svc = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=50), ServeSettings()).start(warmup=False)
    jobs = [(PHRASES[i], MIXED_SPEAKERS[i % 4]) for i in range(32)]
    alone = {job: svc.submit(*job).audio for job in jobs}  # one at a time: every batch has one item
    assert all(r.size == 1 for r in svc.batch_log)
    barrier = threading.Barrier(32)

    def call(job):
        barrier.wait()
        return job, svc.submit(*job)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, jobs))
    svc.close()
    assert sorted(job for job, _ in results) == sorted(jobs)  # none missing, none twice
    sizes = [r.size for r in svc.batch_log[len(jobs):]]
    assert max(sizes) > 1 and max(sizes) <= 8, sizes
    for job, res in results:
        ref = alone[job]
        assert abs(len(ref) - len(res.audio)) <= 256, job
        k = min(len(ref), len(res.audio))
        assert np.corrcoef(ref[:k], res.audio[:k])[0, 1] > 0.99, job
        assert res.timings.batch_sizes[0] >= 1


def test_failing_item_gets_the_error_others_succeed_worker_keeps_serving():
    eng = FakeEngine(fail_on="坏")
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=100)).start(warmup=False)
    texts = ["一号", "二号", "坏的", "三号", "四号"]
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(svc.submit, t, "alice") for t in texts]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(10))
            except SynthesisError as e:
                outcomes.append(e)
    assert isinstance(outcomes[2], SynthesisError) and "fake failure" in str(outcomes[2])
    for t, res in zip(texts, outcomes):
        if t != "坏的":
            np.testing.assert_array_equal(res.audio, expected_audio(svc, t, "alice"))
    assert svc.submit("还在工作", "alice").audio.size > 0
    assert svc.health()["items_failed"] == 1
    svc.close()


def test_out_of_memory_splits_the_batch_and_fails_only_what_cannot_fit():
    eng = FakeEngine(oom_above=2, oom_on="巨大")
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=100)).start(warmup=False)
    texts = ["甲", "乙", "丙", "巨大", "丁", "戊"]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(svc.submit, t, "bob") for t in texts]
        outcomes = [f.exception(10) or f.result() for f in futures]
    assert isinstance(outcomes[3], SynthesisError) and "out of GPU memory even for this sentence alone" in str(outcomes[3])
    assert all(not isinstance(o, Exception) for i, o in enumerate(outcomes) if i != 3)
    assert max(len(b) for b in eng.batches) > 2  # it did try bigger batches first
    svc.close()


def test_full_queue_is_an_immediate_clear_error():
    eng = FakeEngine(delay_s=1.0)  # long enough that all three are queued before the first batch ends
    svc = TTSService(eng, BatchSettings(max_batch_size=1, max_wait_ms=0), ServeSettings(queue_size=2)).start(warmup=False)
    pool = ThreadPoolExecutor(3)
    running = [pool.submit(svc.submit, "一", "alice")]
    wait_until(lambda: len(eng.batches) == 1)  # the first is running
    running += [pool.submit(svc.submit, t, "alice") for t in ("二", "三")]
    wait_until(lambda: svc.queue_depth() == 2)  # two are waiting: the queue is full
    t0 = time.monotonic()
    with pytest.raises(QueueFullError, match="busy"):
        svc.submit("四", "alice")
    assert time.monotonic() - t0 < 0.1
    assert all(f.result(5).audio.size for f in running)  # the accepted ones are all answered
    svc.close()


def test_closed_stream_cancels_its_remaining_sentences():
    eng = FakeEngine(delay_s=0.2)
    svc = TTSService(eng, BatchSettings(max_batch_size=1, max_wait_ms=0)).start(warmup=False)
    text = "第一句。第二句。第三句。第四句。第五句。"
    stream = svc.stream(text, "alice")
    first = next(stream)
    assert first.index == 0 and first.total == 5
    stream.close()  # the browser went away
    time.sleep(0.6)
    computed = [t for batch in eng.batches for t in batch]
    assert len(computed) < 5, computed
    svc.close()


def test_settings_change_mid_load_applies_at_batch_boundary_and_loses_nothing():
    eng = FakeEngine(delay_s=0.05)
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=20)).start(warmup=False)
    texts = [f"第{i}号请求" for i in range(40)]
    with ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(svc.submit, t, "alice") for t in texts]
        time.sleep(0.08)
        applied = svc.update_settings(max_batch_size=2, fp16=True, clear_cache=True).result(5)
        n_before = len(eng.batches)
        results = [f.result(10) for f in futures]
    assert applied.max_batch_size == 2 and applied.clear_cache
    assert applied.fp16 is False and "FP16 is not available for the fake engine" in svc.health()["note"]  # in force: what really runs
    assert svc.settings == applied
    assert all(len(b) <= 2 for b in eng.batches[n_before:])
    for t, res in zip(texts, results):
        np.testing.assert_array_equal(res.audio, expected_audio(svc, t, "alice"))
    svc.close()


def test_invalid_setting_is_refused_at_the_edge():
    svc = TTSService(FakeEngine()).start(warmup=False)
    with pytest.raises(ValueError, match="max_batch_size=0"):
        svc.update_settings(max_batch_size=0)
    svc.close()


def test_long_paragraph_comes_back_in_order():
    eng = FakeEngine()
    svc = TTSService(eng, BatchSettings(max_batch_size=4, max_wait_ms=20)).start(warmup=False)
    paragraph = "".join(f"这是第{i}句话，它的内容各不相同。" for i in range(1, 13))
    res = svc.submit(paragraph, "bob")
    assert len(res.sentences) == 12 and res.sentences[0].startswith("这是第一句话")
    assert res.sentences[-1].startswith("这是第十二句话")
    items = svc.plan(paragraph, "bob")
    assert [u.text for u in items] == res.sentences
    pieces = [FakeEngine.expected(u) for u in items]
    np.testing.assert_array_equal(res.audio, join_sentences(pieces, 16000))
    assert res.timings.batches >= 3 and max(res.timings.batch_sizes) == 4
    svc.close()


def test_real_engine_long_text_splits_and_joins(engine):
    svc = TTSService(engine, BatchSettings(max_batch_size=4, max_wait_ms=10)).start(warmup=False)
    res = svc.submit("第一句话很短。第二句话也不长。第三句。", "Aijia")
    assert res.sentences == ["第一句话很短。", "第二句话也不长。", "第三句。"]
    assert res.timings.batches == 1 and res.timings.batch_sizes == [3, 3, 3]
    assert 1.5 < res.timings.audio_s < 6 and res.sample_rate == 22050
    svc.close()


def test_streaming_yields_first_sentence_before_the_last_is_done():
    eng = FakeEngine(delay_s=0.15)
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=5)).start(warmup=False)
    t0 = time.monotonic()
    pieces = []
    for piece in svc.stream("第一句。第二句。第三句。第四句。", "alice"):
        pieces.append((piece.index, time.monotonic() - t0))
    assert [i for i, _ in pieces] == [0, 1, 2, 3]
    assert pieces[0][1] < pieces[-1][1] - 0.1  # the first arrived a whole batch before the last
    assert eng.batches[0] == ["第一句。"]  # queued alone, so it is not held back by the others
    svc.close()


@pytest.mark.parametrize(
    "text,speaker,emotion,match",
    [
        ("", "alice", "neutral", "empty"),
        ("   \n ", "alice", "neutral", "empty"),
        ("字" * 1001, "alice", "neutral", "1001 characters; the limit is 1000"),
        ("你好", "carol", "neutral", "unknown speaker 'carol'"),
        ("你好", "alice", "furious", "unknown emotion 'furious'"),
        ("，。！？……", "alice", "neutral", "nothing speakable"),
    ],
)
def test_bad_input_gets_a_clear_error(text, speaker, emotion, match):
    svc = TTSService(FakeEngine()).start(warmup=False)
    with pytest.raises(TTSInputError, match=match):
        svc.submit(text, speaker, emotion)
    svc.close()


def test_health_is_json():
    svc = TTSService(FakeEngine()).start(warmup=True)
    svc.submit("你好", "alice")
    health = json.loads(json.dumps(svc.health()))
    assert health["status"] == "ok" and health["engine"] == "fake"
    assert health["batches_run"] >= 1 and health["queue_depth"] == 0
    assert health["settings"]["max_batch_size"] == 8
    assert health["gpu_self_check"] == {"graphs": health["gpu_self_check"]["graphs"], "fp16": {}}  # no half table
    assert health["gpu_self_check"]["graphs"]["detail"] == "CUDA graphs are not available for the fake engine"
    svc.close()
