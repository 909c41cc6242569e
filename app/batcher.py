"""Dynamic batching queue: one worker thread owns the engine; every request carries its own future.

No torch here: the service passes in what to run, how to recognise out-of-memory, and how to free memory.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

from app.errors import CallerLimitError, QueueFullError, SynthesisError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One queued item with its own reply channel and timestamps (time.monotonic seconds)."""

    payload: Any
    future: Future = field(default_factory=Future)
    caller: Hashable = None  # who asked (a page session, a user, an API client); None: in-process code. Batches share by it
    enqueued_at: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # monotonic time after which the caller no longer wants it
    batched_at: float | None = None  # when the worker took it into a batch
    done_at: float | None = None
    batch_id: int | None = None
    batch_size: int | None = None  # size of the engine call that produced its result
    compute_s: float | None = None  # wall time of that engine call
    started: threading.Event = field(default_factory=threading.Event)  # set when taken into a batch

    def abandoned(self, now: float) -> bool:
        """The caller cancelled it or stopped waiting."""
        return self.future.cancelled() or (self.deadline is not None and now > self.deadline)


@dataclass(frozen=True)
class Decision:
    """What the worker does next."""

    run: list[Request]  # run these now, in this order (empty: nothing is due)
    drop: list[Request]  # abandoned requests to discard without computing
    wait_s: float | None  # if nothing runs: how long until the oldest item's wait runs out (None: queue empty)


def next_batch(queue: Sequence[Request], max_batch_size: int, max_wait_ms: float, now: float,
               served: Mapping[Hashable, int] | None = None) -> Decision:
    """Pure batching policy: run when a batch is full or the oldest live item has waited max_wait_ms.

    The batch is filled round-robin across callers (fair_pick), so one caller's flood cannot hold back the others.
    served: each caller's rank by its last pick, lower is longer ago (callers not in it count as never served).
    """
    gone = [r.abandoned(now) for r in queue]  # once per item: each check takes the future's lock
    drop = [r for r, g in zip(queue, gone) if g]
    live = [r for r, g in zip(queue, gone) if not g]
    if not live:
        return Decision([], drop, None)
    due_at = live[0].enqueued_at + max_wait_ms / 1000.0
    if len(live) < max_batch_size and now < due_at:
        return Decision([], drop, due_at - now)
    return Decision(fair_pick(live, max_batch_size, served or {}), drop, None)


def fair_pick(live: Sequence[Request], max_batch_size: int, served: Mapping[Hashable, int]) -> list[Request]:
    """Up to max_batch_size items, one per caller per round; FIFO within a caller.

    Callers picked longest ago (or never) go first in each round; ties go to the caller whose oldest item came first.
    With one item per caller (nobody flooding) this is today's first-come, first-served, and a batch always fills
    to max_batch_size while items are waiting.
    """
    by_caller: dict[Hashable, list[Request]] = {}  # insertion order: each caller's oldest item's place in the queue
    for req in live:
        by_caller.setdefault(req.caller, []).append(req)
    callers = sorted(by_caller, key=lambda c: served.get(c, -1))  # stable: ties keep queue order
    picked: list[Request] = []
    for depth in range(max_batch_size):
        before = len(picked)
        for caller in callers:
            items = by_caller[caller]
            if depth < len(items):
                picked.append(items[depth])
                if len(picked) == max_batch_size:
                    return picked
        if len(picked) == before:  # every caller's items are taken
            break
    return picked


@dataclass(frozen=True)
class BatchRecord:
    """One engine call, for the profiler's batch-size plot."""

    t: float  # wall-clock time (time.time()) the batch finished
    size: int
    compute_s: float
    queue_depth: int  # items still waiting when it finished
    ok: bool


class Batcher:
    """Bounded queue + one worker thread running run_batch(payloads) -> outputs, one output per payload."""

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch_size: int,
        max_wait_ms: float,
        capacity: int,
        is_oom: Callable[[BaseException], bool] = lambda e: False,
        free_memory: Callable[[], None] = lambda: None,
        after_batch: Callable[[], None] = lambda: None,
        log_size: int = 2000,
        max_queued_per_caller: int = 0,
    ) -> None:
        """max_queued_per_caller: most items one caller (not None) may have waiting; 0: no cap."""
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.capacity = capacity
        self.max_queued_per_caller = max_queued_per_caller
        self._is_oom, self._free_memory, self._after_batch = is_oom, free_memory, after_batch
        self._queue: deque[Request] = deque()
        self._controls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._next_batch_id = 0
        self.current_batch_id = -1  # the engine call in progress (run_batch may read it to key what it records)
        self._picks = 0  # items taken into batches so far: numbers each caller's last pick for the round-robin
        self._served: dict[Hashable, int] = {}  # caller -> the number of its last pick, for callers still waiting
        self.batches_run = 0
        self.items_run = 0
        self.items_failed = 0
        self.items_dropped = 0
        self.log: deque[BatchRecord] = deque(maxlen=log_size)

    # --- caller side -------------------------------------------------------------------------------
    def submit(self, payload: Any, timeout_s: float | None = None, caller: Hashable = None) -> Request:
        """Enqueue one item; raise QueueFullError at once when the queue (or the caller's share) is full."""
        return self.submit_many([payload], timeout_s, caller)[0]

    def submit_many(self, payloads: Sequence[Any], timeout_s: float | None = None, caller: Hashable = None,
                    cap_count: int | None = None) -> list[Request]:
        """Enqueue several items atomically: all of them or none (QueueFullError, or CallerLimitError for the caller's cap).

        cap_count: how many items to count against the caller's cap (default: these): a stream counts its whole text
        with its first sentence, then queues the rest with 0, so a text is admitted or refused as a whole.
        """
        now = time.monotonic()
        reqs = [Request(p, enqueued_at=now, deadline=None if timeout_s is None else now + timeout_s, caller=caller) for p in payloads]
        with self._cond:
            if not self._running:
                raise RuntimeError("the batcher is not running")
            if len(self._queue) + len(reqs) > self.capacity:
                raise QueueFullError(
                    f"server busy: {len(self._queue)} sentences are waiting and this request adds {len(reqs)} "
                    f"(limit {self.capacity}); try again shortly"
                )
            self._check_caller_cap(caller, len(reqs) if cap_count is None else cap_count)
            self._queue.extend(reqs)
            self._cond.notify()
        return reqs

    def _check_caller_cap(self, caller: Hashable, adding: int) -> None:
        """Under the lock: refuse a caller whose waiting items plus these would pass its cap (in-process code has none).

        A caller with nothing waiting is always admitted: one text's length is bounded by max_chars and the queue's
        capacity; the cap stops a caller piling texts up.
        """
        cap = self.max_queued_per_caller
        if caller is None or not cap or not adding:
            return
        waiting = sum(1 for r in self._queue if r.caller == caller)
        if waiting and waiting + adding > cap:
            raise CallerLimitError(
                f"too many requests in flight for this session: {waiting} of its sentences are waiting and this request "
                f"adds {adding} (limit {cap} per session); wait for some to finish"
            )

    def between_batches(self, action: Callable[[], Any]) -> Future:
        """Run action on the worker thread before the next batch (settings changes); returns its future."""
        fut: Future = Future()
        with self._cond:
            self._controls.append((action, fut))
            self._cond.notify()
        if not self._running:
            self._run_controls()
        return fut

    def alive(self) -> bool:
        """Whether the worker thread is running (False before start, after stop, or if it died)."""
        return self._running and self._thread is not None and self._thread.is_alive()

    def depth(self) -> int:
        """Items waiting (not yet taken into a batch)."""
        with self._cond:
            return len(self._queue)

    # --- worker side -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="tts-batch-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the batch in flight; fail whatever is still queued so no caller waits forever."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
        for req in leftover:
            if req.future.set_running_or_notify_cancel():
                req.future.set_exception(SynthesisError("the service is shutting down"))
        self._run_controls()

    def _run_controls(self) -> None:
        while True:
            with self._cond:
                if not self._controls:
                    return
                action, fut = self._controls.popleft()
            try:
                fut.set_result(action())
            except BaseException as exc:  # a bad setting must not kill the worker
                fut.set_exception(exc)

    def _take(self) -> list[Request] | None:
        """Block until a batch is due (None when stopping); settings actions run first."""
        with self._cond:
            while True:
                if not self._running:
                    return None
                if self._controls:
                    return []
                decision = next_batch(self._queue, self.max_batch_size, self.max_wait_ms, time.monotonic(), self._served)
                for req in decision.drop:
                    self._queue.remove(req)
                    req.future.cancel()
                    self.items_dropped += 1
                if decision.run:
                    for req in decision.run:
                        self._queue.remove(req)
                    self._note_served(decision.run)
                    return decision.run
                self._cond.wait(decision.wait_s)

    def _note_served(self, batch: list[Request]) -> None:
        """Under the lock: number this batch's picks in order for the round-robin; forget callers with nothing waiting
        (one that comes back counts as never served)."""
        waiting = {r.caller for r in self._queue}
        self._served = {c: n for c, n in self._served.items() if c in waiting}
        for req in batch:
            self._picks += 1
            if req.caller in waiting:
                self._served[req.caller] = self._picks

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run_controls()
            now = time.monotonic()
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # a cancelled caller is skipped
            self.items_dropped += len(batch) - len(live)
            for req in live:
                req.batched_at = now
                req.started.set()
            if live:
                self._run(live)
                try:
                    self._after_batch()
                except Exception:  # cache clearing is best effort
                    log.exception("after-batch hook failed")

    def _run(self, batch: list[Request]) -> None:
        """Run one engine call; on failure retry in halves so only the item that fails alone gets an error."""
        batch_id = self.current_batch_id = self._next_batch_id
        self._next_batch_id += 1
        t0 = time.monotonic()
        error: BaseException | None = None
        try:
            outputs = self._run_batch([r.payload for r in batch])
            if len(outputs) != len(batch):
                raise SynthesisError(f"engine returned {len(outputs)} outputs for {len(batch)} inputs")
        except BaseException as exc:
            # Drop the traceback now: its frames hold the failed batch's tensors, which must be freed before
            # the retry (on a GPU out of memory, keeping them made every half fail too).
            error = exc.with_traceback(None)
        compute_s = time.monotonic() - t0
        if error is None:
            self._record(len(batch), compute_s, ok=True)
            for req, out in zip(batch, outputs):
                self._finish(req, batch_id, len(batch), compute_s, result=out)
            return
        oom = self._is_oom(error)
        self._record(len(batch), compute_s, ok=False)
        if oom:
            self._free_memory()
        if len(batch) > 1:
            log.warning("batch of %d failed (%s); retrying in halves", len(batch), type(error).__name__)
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        if not isinstance(error, SynthesisError):
            prefix = "out of GPU memory even for this sentence alone: " if oom else "synthesis failed: "
            error = SynthesisError(f"{prefix}{type(error).__name__}: {error}")
        self.items_failed += 1
        self._finish(batch[0], batch_id, 1, compute_s, exc=error)

    def _record(self, size: int, compute_s: float, ok: bool) -> None:
        self.batches_run += 1
        self.items_run += size if ok else 0
        self.log.append(BatchRecord(time.time(), size, compute_s, self.depth(), ok))

    @staticmethod
    def _finish(req: Request, batch_id: int, size: int, compute_s: float, result: Any = None, exc: BaseException | None = None) -> None:
        req.done_at = time.monotonic()
        req.batch_id, req.batch_size, req.compute_s = batch_id, size, compute_s
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(result)
