"""Stage spans: where each batch's time goes, recorded always and nearly free.

Engines say which stage they are in with `mark("decoder")` (and `annotate(steps=...)` for what a stage did); the
service's batch worker sets the current batch's `Recorder` around the engine call, so a mark outside a batch (a
benchmark, a CLI, the warm-up of a capture) is a no-op. Marks are sequential: each one ends the stage before it, so
the stages of a batch tile the engine call by construction, and a mark is one added line, never an indented block.

Clocks: on the CPU `time.perf_counter` at each mark. On CUDA a CUDA event recorded on the current stream at each mark
and read once the batch is over: every engine ends its batch by copying the audio to the host (`.cpu()`), which
waits for the stream, so by then every event has completed and reading it waits for nothing. No sync is added to
the hot path; an event record is an asynchronous driver call of a few microseconds.

While a trace is being recorded (profiling.trace) every stage also opens a `record_function` range named
"stage:NAME" (and the engine call one named "batch"), so the stages show in Perfetto's timeline; otherwise torch's
profiler is never touched.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

# What engines mark inside a batch, in the order they run (an engine marks those it has).
BATCH_STAGES = (
    "frontend",  # the engine's own text -> symbols conversion (phkit ids, KAN-TTS symbols)
    "encoder",  # inputs to tensors on the device, text encoder (and Sambert's variance adaptor, length regulator)
    "decoder",  # the autoregressive decoder loop (steps: loop iterations, frames: mel frames over items)
    "postnet",  # the residual postnet after the loop
    "vocoder",  # mel -> waveform, and the waveform back to the host
    "pipeline",  # an engine that runs as one opaque call (ModelScope's pipeline)
)
OTHER = "other"  # engine-call time outside any marked stage (lock, setup before the first mark)
# A request's whole split, in time order: its own frontend (checks, normalisation, splitting; plus the engine's symbol
# conversion in its batches), queue wait, its batches' stages, post-processing on the CPU pool, joining its audio.
REQUEST_STAGES = ("frontend", "queue", *BATCH_STAGES[1:], OTHER, "post", "audio")
TRACE_RANGE_PREFIX = "stage:"  # record_function names, while a trace is recorded
TRACE_BATCH_RANGE = "batch"


@dataclass(frozen=True)
class Span:
    """One stage of one engine call."""

    stage: str  # one of BATCH_STAGES
    offset_s: float  # start, seconds after the engine call began
    duration_s: float  # seconds (GPU time between its CUDA events on CUDA, host time on the CPU)
    steps: int = 0  # decoder loop iterations run (decoder stage)
    frames: int = 0  # mel frames produced, summed over the batch's items (decoder stage)


@dataclass(frozen=True)
class BatchSpans:
    """One engine call's stages: the per-batch record."""

    batch_id: int  # the batcher's id of the engine call (requests carry it)
    t: float  # time.time() when the call ended
    size: int  # items in the call
    wall_s: float  # the call's wall time on the host clock
    spans: tuple[Span, ...]  # in the order they ran; a stage may repeat (Sambert runs each voice in turn)
    ok: bool = True  # False: the call raised (its items are retried or failed)
    clock: str = "perf_counter"  # "cuda events" when the stage durations are GPU time

    def totals(self) -> dict[str, float]:
        """Seconds per stage (repeats summed), plus OTHER: wall time outside every stage."""
        out: dict[str, float] = {}
        for span in self.spans:
            out[span.stage] = out.get(span.stage, 0.0) + span.duration_s
        out[OTHER] = max(0.0, self.wall_s - sum(out.values()))
        return out

    @property
    def steps(self) -> int:
        return sum(span.steps for span in self.spans)

    @property
    def frames(self) -> int:
        return sum(span.frames for span in self.spans)


_local = threading.local()  # .recorder: the Recorder of the batch running on this thread, if any
_trace_ranges = False  # set by profiling.trace on the worker thread while a trace is recorded


def mark(stage: str) -> None:
    """Begin `stage` in the current batch, ending the one before it; a no-op when nothing records."""
    recorder = getattr(_local, "recorder", None)
    if recorder is not None:
        recorder.mark(stage)


def annotate(stage: str | None = None, **counts: int) -> None:
    """Add counts (steps, frames) to the latest span of `stage` (None: the open one); a no-op when nothing records."""
    recorder = getattr(_local, "recorder", None)
    if recorder is not None:
        recorder.annotate(stage, counts)


def set_trace_ranges(on: bool) -> None:
    """Open record_function ranges for batches and stages from now on (profiling.trace, on the worker thread)."""
    global _trace_ranges
    _trace_ranges = on


class Recorder:
    """The stages of one engine call, as the engine marks them."""

    def __init__(self, batch_id: int, size: int, device: str = "cpu") -> None:
        self.batch_id, self.size = batch_id, size
        # torch is only touched on CUDA, where the engine has imported it already.
        torch = sys.modules.get("torch") if device.startswith("cuda") else None
        self._stream = torch.cuda.current_stream(torch.device(device)) if torch is not None else None
        self._event_type = torch.cuda.Event if torch is not None else None
        self._marks: list[list] = []  # [stage, host time, CUDA event or None, {counts}]
        self._tracing = _trace_ranges  # fixed for the whole call, so its ranges always nest
        self._batch_range = self._open_range(TRACE_BATCH_RANGE) if self._tracing else None
        self._stage_range = None
        self._t0 = time.perf_counter()
        self._event0 = self._event()

    def _event(self):
        if self._stream is None:
            return None
        event = self._event_type(enable_timing=True)
        event.record(self._stream)  # asynchronous: marks a point in the engine's stream, no wait
        return event

    @staticmethod
    def _open_range(name: str):
        from torch.autograd.profiler import record_function  # only while a trace is recorded

        rf = record_function(name)
        rf.__enter__()
        return rf

    def _close_stage_range(self) -> None:
        if self._stage_range is not None:
            self._stage_range.__exit__(None, None, None)
            self._stage_range = None

    def mark(self, stage: str) -> None:
        self._close_stage_range()
        self._marks.append([stage, time.perf_counter(), self._event(), {}])
        if self._tracing:
            self._stage_range = self._open_range(TRACE_RANGE_PREFIX + stage)

    def annotate(self, stage: str | None, counts: dict[str, int]) -> None:
        for entry in reversed(self._marks):
            if stage is None or entry[0] == stage:
                for key, value in counts.items():
                    entry[3][key] = entry[3].get(key, 0) + int(value)
                return

    def finish(self, ok: bool = True) -> BatchSpans:
        """End the last stage now and read the clocks (on CUDA after the engine's own final sync: no wait)."""
        end_host = time.perf_counter()
        end_event = self._event()
        self._close_stage_range()
        if self._batch_range is not None:
            self._batch_range.__exit__(None, None, None)
        clock = "perf_counter"
        if end_event is not None and ok:
            end_event.synchronize()  # the engine's .cpu() already drained the stream: returns at once
            events = [entry[2] for entry in self._marks] + [end_event]
            durations = [a.elapsed_time(b) / 1000.0 for a, b in zip(events, events[1:])]
            first = self._event0.elapsed_time(events[0]) / 1000.0 if self._marks else 0.0
            clock = "cuda events"
        else:  # CPU, or a failed CUDA call whose stream state is unknown: host time only
            times = [entry[1] for entry in self._marks] + [end_host]
            durations = [b - a for a, b in zip(times, times[1:])]
            first = times[0] - self._t0 if self._marks else 0.0
        spans, offset = [], first
        for (stage, _, _, counts), duration in zip(self._marks, durations):
            spans.append(Span(stage, offset, max(0.0, duration), counts.get("steps", 0), counts.get("frames", 0)))
            offset += duration
        return BatchSpans(self.batch_id, time.time(), self.size, end_host - self._t0, tuple(spans), ok, clock)


class SpanRing:
    """The recent batches' records (bounded), and who watches them arrive (profiling.trace)."""

    def __init__(self, capacity: int = 2000) -> None:
        self._records: deque[BatchSpans] = deque(maxlen=capacity)
        self._by_id: dict[int, BatchSpans] = {}
        self._lock = threading.Lock()
        self._watchers: list[Callable[[BatchSpans], None]] = []

    @contextmanager
    def batch(self, batch_id: int, size: int, device: str = "cpu") -> Iterator[Recorder]:
        """Around one engine call on the worker thread: marks inside it land in this batch's record."""
        recorder = Recorder(batch_id, size, device)
        _local.recorder = recorder
        ok = False
        try:
            yield recorder
            ok = True
        finally:
            _local.recorder = None
            self.add(recorder.finish(ok))

    def add(self, record: BatchSpans) -> None:
        with self._lock:
            if len(self._records) == self._records.maxlen:
                self._by_id.pop(self._records[0].batch_id, None)
            self._records.append(record)
            self._by_id[record.batch_id] = record
        for watcher in list(self._watchers):
            watcher(record)

    def get(self, batch_id: int) -> BatchSpans | None:
        """The record of one engine call, if it is still in the ring."""
        with self._lock:
            return self._by_id.get(batch_id)

    def records(self, since: float | None = None) -> list[BatchSpans]:
        """Records of calls that ended after time.time() `since` (all when None), oldest first."""
        with self._lock:
            rows = list(self._records)
        return rows if since is None else [r for r in rows if r.t > since]

    def watch(self, watcher: Callable[[BatchSpans], None]) -> None:
        """Call watcher(record) after every engine call, on the worker thread, once its record is in the ring."""
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[BatchSpans], None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
