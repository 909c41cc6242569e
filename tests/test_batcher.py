"""The batching policy (pure) and the worker, without any model."""
from __future__ import annotations

import threading
import time

import pytest

from app.batcher import Batcher, Request, next_batch
from app.errors import QueueFullError, SynthesisError


def req(t: float, payload=None) -> Request:
    return Request(payload, enqueued_at=t)


def test_empty_queue_waits_indefinitely():
    d = next_batch([], max_batch_size=4, max_wait_ms=10, now=100.0)
    assert d.run == [] and d.drop == [] and d.wait_s is None


def test_full_batch_runs_at_once_oldest_first():
    q = [req(100.0 + i / 1000, i) for i in range(6)]
    d = next_batch(q, max_batch_size=4, max_wait_ms=1000, now=100.006)
    assert [r.payload for r in d.run] == [0, 1, 2, 3]


def test_partial_batch_waits_until_oldest_deadline():
    q = [req(100.0, "a"), req(100.004, "b")]
    d = next_batch(q, max_batch_size=4, max_wait_ms=10, now=100.005)
    assert d.run == [] and d.wait_s == pytest.approx(0.005)
    d = next_batch(q, max_batch_size=4, max_wait_ms=10, now=100.010)
    assert [r.payload for r in d.run] == ["a", "b"]


def test_cancelled_and_expired_callers_are_dropped_not_run():
    a, b, c = req(100.0, "a"), req(100.0, "b"), req(100.0, "c")
    b.future.cancel()
    c.deadline = 100.5
    d = next_batch([a, b, c], max_batch_size=4, max_wait_ms=0, now=101.0)
    assert [r.payload for r in d.run] == ["a"]
    assert set(map(id, d.drop)) == {id(b), id(c)}


def test_only_cancelled_items_means_nothing_to_run():
    a = req(100.0)
    a.future.cancel()
    d = next_batch([a], max_batch_size=4, max_wait_ms=0, now=100.0)
    assert d.run == [] and d.drop == [a] and d.wait_s is None


def echo_batcher(**kw) -> Batcher:
    sizes = []

    def run(payloads):
        sizes.append(len(payloads))
        time.sleep(0.02)
        return [p * 10 for p in payloads]

    b = Batcher(run, max_batch_size=kw.get("max_batch_size", 4), max_wait_ms=kw.get("max_wait_ms", 20), capacity=kw.get("capacity", 100))
    b.sizes = sizes
    b.start()
    return b


def test_worker_answers_each_caller_with_its_own_result():
    b = echo_batcher()
    reqs = [b.submit(i) for i in range(10)]
    assert [r.future.result(5) for r in reqs] == [i * 10 for i in range(10)]
    assert max(b.sizes) > 1 and sum(b.sizes) == 10
    b.stop()


def test_full_queue_fails_at_once_with_busy_error():
    gate = threading.Event()
    b = Batcher(lambda ps: (gate.wait(5), ps)[1], max_batch_size=1, max_wait_ms=0, capacity=2)
    b.start()
    first = b.submit("running")
    time.sleep(0.05)  # the worker has taken it; the queue is empty again
    b.submit("q1")
    b.submit("q2")
    t0 = time.monotonic()
    with pytest.raises(QueueFullError, match="busy"):
        b.submit("q3")
    assert time.monotonic() - t0 < 0.1
    with pytest.raises(QueueFullError):
        b.submit_many(["x"])
    gate.set()
    assert first.future.result(5) == "running"
    b.stop()


def test_cancelled_caller_is_not_computed():
    gate = threading.Event()
    seen = []

    def run(ps):
        seen.extend(ps)
        gate.wait(5)
        return ps

    b = Batcher(run, max_batch_size=1, max_wait_ms=0, capacity=10)
    b.start()
    b.submit("blocker")
    time.sleep(0.05)
    gone = b.submit("gone")
    kept = b.submit("kept")
    assert gone.future.cancel()
    gate.set()
    assert kept.future.result(5) == "kept"
    assert "gone" not in seen and b.items_dropped >= 1
    b.stop()


def test_failing_item_is_isolated_by_split_retry_and_worker_survives():
    def run(ps):
        if "bad" in ps:
            raise ValueError("boom")
        return [p.upper() for p in ps]

    b = Batcher(run, max_batch_size=8, max_wait_ms=50, capacity=100)
    b.start()
    reqs = b.submit_many(["a", "b", "bad", "c", "d"])
    results = []
    for r in reqs:
        try:
            results.append(r.future.result(5))
        except SynthesisError as e:
            results.append(f"error: {e}")
    assert results[:2] == ["A", "B"] and results[3:] == ["C", "D"]
    assert results[2].startswith("error: synthesis failed: ValueError: boom")
    assert b.submit("after").future.result(5) == "AFTER"
    b.stop()


def test_output_count_mismatch_is_an_error_not_a_misrouting():
    b = Batcher(lambda ps: ps[:1], max_batch_size=2, max_wait_ms=50, capacity=10)
    b.start()
    r1, r2 = b.submit_many(["a", "b"])
    # the pair fails as a whole, then each alone succeeds: nobody gets another's output
    assert (r1.future.result(5), r2.future.result(5)) == ("a", "b")
    b.stop()


def test_settings_actions_run_between_batches():
    order = []

    def run(ps):
        order.append(("batch", tuple(ps)))
        time.sleep(0.05)
        return ps

    b = Batcher(run, max_batch_size=2, max_wait_ms=0, capacity=10)
    b.start()
    first = b.submit_many(["a", "b"])
    time.sleep(0.01)
    fut = b.between_batches(lambda: order.append(("settings",)) or "applied")
    rest = b.submit_many(["c", "d"])
    assert fut.result(5) == "applied"
    assert [r.future.result(5) for r in first + rest] == ["a", "b", "c", "d"]
    assert order.index(("settings",)) == 1  # after the batch in flight, before the next
    b.stop()


def test_stop_fails_queued_items_instead_of_leaving_callers_waiting():
    gate = threading.Event()
    b = Batcher(lambda ps: (gate.wait(0.2), ps)[1], max_batch_size=1, max_wait_ms=0, capacity=10)
    b.start()
    b.submit("running")
    time.sleep(0.05)
    waiting = b.submit("waiting")
    b.stop()
    with pytest.raises(SynthesisError, match="shutting down"):
        waiting.future.result(5)


def test_failed_batch_memory_is_released_before_the_retry():
    """The failed attempt's tensors (held by its traceback frames) must be gone when the halves run."""
    import gc
    import weakref

    class Big:
        pass

    refs: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    def run(ps):
        alive_at_retry.append(any(r() is not None for r in refs))
        big = Big()  # stands in for the failed batch's activations
        refs.append(weakref.ref(big))
        if len(ps) > 1:
            raise MemoryError("too big")
        return ps

    freed: list[bool] = []
    b = Batcher(run, max_batch_size=4, max_wait_ms=50, capacity=10, is_oom=lambda e: isinstance(e, MemoryError),
                free_memory=lambda: freed.append(gc.collect() >= 0))
    b.start()
    reqs = b.submit_many(["a", "b"])
    assert [r.future.result(5) for r in reqs] == ["a", "b"]
    b.stop()
    assert alive_at_retry == [False, False, False] and freed
