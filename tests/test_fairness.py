"""Fair share of the queue: round-robin batches across callers (pure policy, worker, service) and the per-caller cap."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.audio import join_sentences
from app.batcher import Batcher, Request, next_batch
from app.errors import CallerLimitError, QueueFullError
from app.service import TTSService
from app.settings import BatchSettings, ServeSettings
from tests.fixtures.fake_engine import FakeEngine


def req(t: float, caller, payload=None) -> Request:
    return Request(payload, enqueued_at=t, caller=caller)


def drain(queue: list[Request], max_batch_size: int, batches: int) -> list[list]:
    """Form `batches` batches the way the worker does (remove the batch, number its picks); their payloads."""
    served: dict = {}
    picks, out = 0, []
    for _ in range(batches):
        run = next_batch(queue, max_batch_size, max_wait_ms=0, now=1e9, served=served).run
        for r in run:
            queue.remove(r)
        waiting = {r.caller for r in queue}
        served = {c: k for c, k in served.items() if c in waiting}
        for r in run:
            picks += 1
            if r.caller in waiting:
                served[r.caller] = picks
        out.append([r.payload for r in run])
    return out


def test_batch_is_round_robin_across_callers_and_fifo_within_each():
    flood = [req(100.0, "F", f"f{i}") for i in range(6)]
    lone = req(100.5, "L", "l0")
    d = next_batch(flood + [lone], max_batch_size=4, max_wait_ms=1000, now=100.6)
    assert [r.payload for r in d.run] == ["f0", "l0", "f1", "f2"]  # the lone caller is in the first full batch
    d = next_batch(flood + [lone], max_batch_size=4, max_wait_ms=1000, now=100.6, served={"F": 7})
    assert [r.payload for r in d.run] == ["l0", "f0", "f1", "f2"]  # served longest ago (never) goes first


def test_one_item_per_caller_is_first_come_first_served_and_batches_fill():
    q = [req(100.0 + i / 1000, f"c{i}", i) for i in range(10)]
    d = next_batch(q, max_batch_size=4, max_wait_ms=1000, now=100.01)
    assert [r.payload for r in d.run] == [0, 1, 2, 3]
    assert drain(q, 4, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_single_caller_is_plain_fifo():
    q = [req(100.0, None, i) for i in range(10)]
    assert drain(q, 4, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_many_flooding_callers_share_every_batch_and_none_starves():
    q = [req(100.0, f"c{c}", (c, i)) for c in range(10) for i in range(5)]  # all queued at the same instant
    batches = drain(q, 8, 6)
    assert all(len(b) == 8 for b in batches[:-1])
    assert {c for b in batches[:2] for c, _ in b} == set(range(10))  # every caller within two batches
    counts = [sum(1 for b in batches[:5] for c, _ in b if c == k) for k in range(10)]
    assert max(counts) - min(counts) <= 1, counts  # 40 slots, 10 callers: 4 each
    for c in range(10):  # FIFO within a caller
        mine = [i for b in batches for k, i in b if k == c]
        assert mine == sorted(mine)


def test_waiting_and_deadline_rules_are_unchanged_by_callers():
    q = [req(100.0, "a", "a"), req(100.004, "b", "b")]
    d = next_batch(q, max_batch_size=4, max_wait_ms=10, now=100.005, served={"a": 3})
    assert d.run == [] and d.wait_s == pytest.approx(0.005)
    d = next_batch(q, max_batch_size=4, max_wait_ms=10, now=100.010, served={"a": 3})
    assert [r.payload for r in d.run] == ["b", "a"]


def blocked_batcher(cap: int) -> tuple[Batcher, threading.Event]:
    """A batcher whose worker is stuck on a first item until the gate opens, so the queue holds still."""
    gate = threading.Event()
    b = Batcher(lambda ps: (gate.wait(10), [f"{p}!" for p in ps])[1], max_batch_size=2, max_wait_ms=0, capacity=100,
                max_queued_per_caller=cap)
    b.start()
    b.submit("blocker", caller="X")
    deadline = time.monotonic() + 5
    while b.depth() and time.monotonic() < deadline:
        time.sleep(0.005)
    return b, gate


def test_caller_cap_refuses_the_whole_request_and_loses_nothing():
    b, gate = blocked_batcher(cap=4)
    try:
        accepted = b.submit_many(["a1", "a2", "a3"], caller="A")
        with pytest.raises(CallerLimitError, match="too many requests in flight for this session") as refused:
            b.submit_many(["a4", "a5"], caller="A")
        assert isinstance(refused.value, QueueFullError)  # handlers answer it like "busy"
        assert "3 of its sentences are waiting" in str(refused.value) and "limit 4" in str(refused.value)
        assert b.depth() == 3  # all or nothing: none of the refused request was queued
        accepted += b.submit_many(["a4"], caller="A")  # within the cap
        others = b.submit_many([f"b{i}" for i in range(6)], caller="B")  # another caller has its own share...
        inproc = b.submit_many([f"n{i}" for i in range(6)])  # ...and in-process code (caller None) has no cap
        gate.set()
        for r in accepted + others + inproc:
            assert r.future.result(5) == f"{r.payload}!"
    finally:
        gate.set()
        b.stop()


def test_caller_with_nothing_waiting_is_admitted_even_past_the_cap():
    b, gate = blocked_batcher(cap=2)
    try:
        long_text = b.submit_many(["s1", "s2", "s3"], caller="A")  # one text longer than the cap: admitted whole
        with pytest.raises(CallerLimitError):
            b.submit("more", caller="A")
        waiting = b.submit_many(["b1"], caller="B")
        with pytest.raises(CallerLimitError):  # a stream's first sentence counts its whole text (3)
            b.submit_many(["t1"], caller="B", cap_count=3)
        stream_first = b.submit_many(["t1"], caller="B", cap_count=1)
        rest = b.submit_many(["t2", "t3"], caller="B", cap_count=0)  # and a stream's rest is never refused by the cap
        gate.set()
        answers = [r.future.result(5) for r in long_text + waiting + stream_first + rest]
        assert answers == ["s1!", "s2!", "s3!", "b1!", "t1!", "t2!", "t3!"]
    finally:
        gate.set()
        b.stop()


def flood(svc: TTSService, flood_caller, lone_caller, n: int = 64) -> tuple[list[tuple[str, object]], int]:
    """One caller sends n one-sentence texts at once, another sends one a moment later.

    Returns the completion order [(who, result)] and how many flood texts had finished when the lone one was sent.
    """
    order: list[tuple[str, object]] = []
    lock = threading.Lock()

    def call(who: str, text: str, caller):
        result = svc.submit(text, "alice", caller=caller)
        with lock:
            order.append((who, text, result))

    with ThreadPoolExecutor(n + 1) as pool:
        futures = [pool.submit(call, "flood", f"第{i}句。", flood_caller) for i in range(n)]
        deadline = time.monotonic() + 10  # all of the flood accepted (at most one batch of it in flight)
        while svc.queue_depth() + svc.health()["items_run"] < n - 8 and time.monotonic() < deadline:
            time.sleep(0.002)
        with lock:
            done_before = len(order)
        futures.append(pool.submit(call, "lone", "我只说一句。", lone_caller))
        for f in futures:
            f.result(30)
    return order, done_before


def test_lone_caller_is_answered_within_two_batches_of_a_64_request_flood():
    eng = FakeEngine(delay_s=0.2)
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=5)).start(warmup=False)
    try:
        order, done_before = flood(svc, "session:flood", "session:lone")
    finally:
        svc.close()
    position = [who for who, _, _ in order].index("lone")
    # Finished before it: what had finished when it came, the batch in flight then, and at most its own batch's others.
    assert position <= done_before + 2 * 8, (position, done_before)
    assert len(order) - position > 32, "the flood should still be running when the lone caller is answered"
    for who, text, result in order:  # every request got its own audio
        (item,) = svc.plan(text, "alice")
        np.testing.assert_array_equal(result.audio, join_sentences([FakeEngine.expected(item)], eng.sample_rate))


def test_without_caller_keys_the_lone_request_waits_behind_the_flood():
    """The contrast that shows the test above can fail: first come, first served (one caller) puts it last."""
    eng = FakeEngine(delay_s=0.2)
    svc = TTSService(eng, BatchSettings(max_batch_size=8, max_wait_ms=5)).start(warmup=False)
    try:
        order, _ = flood(svc, None, None)
    finally:
        svc.close()
    assert [who for who, _, _ in order].index("lone") >= 56


def test_service_cap_refuses_a_whole_text_and_a_stream_before_any_audio():
    eng = FakeEngine(delay_s=0.5)
    svc = TTSService(eng, BatchSettings(max_batch_size=1, max_wait_ms=0), ServeSettings(max_queued_per_client=3)).start(warmup=False)
    pool = ThreadPoolExecutor(4)
    try:
        pool.submit(svc.submit, "先跑这个。", "alice", caller="X")  # occupies the worker
        deadline = time.monotonic() + 5
        while not eng.batches and time.monotonic() < deadline:
            time.sleep(0.005)
        first = pool.submit(svc.submit, "一。二。", "alice", caller="A")  # two sentences waiting
        while svc.queue_depth() < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(CallerLimitError, match="too many requests in flight for this session"):
            svc.submit("三。四。", "alice", caller="A")
        with pytest.raises(CallerLimitError):
            next(svc.stream("三。四。", "alice", caller="A"))
        assert svc.queue_depth() == 2  # nothing of the refused requests was queued
        assert first.result(10).sentences == ["一。", "二。"]
        assert svc.submit("三。四。", "alice", caller="A").sentences == ["三。", "四。"]  # once its queue drained: accepted
    finally:
        pool.shutdown(wait=True)
        svc.close()


def test_settings_reject_a_negative_cap_and_the_operator_named_as_a_visitor():
    with pytest.raises(ValueError, match="max_queued_per_client=-1"):
        ServeSettings(max_queued_per_client=-1)
    with pytest.raises(ValueError, match="'boss' must differ"):
        ServeSettings(auth=("boss", "a"), admin=("boss", "b"))
    assert "secret" not in repr(ServeSettings(admin=("boss", "secret")))


def test_replica_passes_the_caller_to_its_service():
    """The Serve replica's async submit takes the caller the front passes through, and its batcher applies the cap."""
    import asyncio

    from app.cluster.replica import TTSReplica
    from app.settings import EngineSettings

    replica = TTSReplica(EngineSettings(), BatchSettings(max_batch_size=1, max_wait_ms=0), ServeSettings(max_queued_per_client=2),
                         full_warmup=False, engine=FakeEngine(delay_s=0.3))

    async def three():
        return await asyncio.gather(replica.submit("先跑这个。", "alice", caller="X"),
                                    replica.submit("一。二。", "alice", caller="A"),
                                    replica.submit("三。", "alice", caller="A"), return_exceptions=True)

    try:
        first, second, third = asyncio.run(three())
    finally:
        replica.close()
    assert first.sentences == ["先跑这个。"] and second.sentences == ["一。", "二。"]
    assert isinstance(third, CallerLimitError) and "too many requests in flight for this session" in str(third)
