"""TTSService: one resident engine behind the dynamic batcher; validation, sentence splitting, live settings."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import sys
import time
import zlib
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, ClassVar, Hashable, Iterator, Sequence

import numpy as np

from app import text as textproc
from app.audio import join_sentences
from app.batcher import Batcher, Request
from app.engines.base import NEUTRAL, WARMUP_TEXT, EngineBase, Utterance
from app.errors import SynthesisError, TTSInputError
from app.memory import rss_mib, torch_cuda_mib
from app.postprocess import Job, PostProcessor
from app.settings import BatchSettings, ServeSettings, check_controls
from app.spans import BatchSpans, SpanRing
from app.timings import Timings, request_timings, stage_health

log = logging.getLogger(__name__)


@dataclass
class Result:
    """A whole request's audio and how it was made."""

    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    timings: Timings
    sentences: list[str]


@dataclass
class Piece:
    """One streamed sentence."""

    index: int
    total: int
    text: str
    audio: np.ndarray
    sample_rate: int
    elapsed_s: float  # since submit


def _torch_if_loaded():
    """torch if something already imported it (the service never imports it itself)."""
    return sys.modules.get("torch")


def _is_oom(exc: BaseException) -> bool:
    torch = _torch_if_loaded()
    return bool(torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError))


def _free_cuda_cache() -> None:
    gc.collect()
    torch = _torch_if_loaded()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_text(text: str, max_chars: int) -> None:
    """Refuse empty or oversized text with a TTSInputError naming the problem (the model-free part of plan())."""
    if not isinstance(text, str) or not text.strip():
        raise TTSInputError("text is empty: type some Chinese text to synthesize")
    if len(text) > max_chars:
        raise TTSInputError(f"text has {len(text)} characters; the limit is {max_chars}")


class TTSService:
    """The one resident pipeline every request goes through."""

    owns_engine: ClassVar[bool] = True  # the engine runs in this process (the replicas' front client says False)

    def __init__(self, engine: EngineBase, batch: BatchSettings = BatchSettings(), serve: ServeSettings = ServeSettings()) -> None:
        self.engine = engine
        self.serve = serve
        # CUDA graphs and the runtime asked for are put in force by the worker when the service starts; until then
        # the dynamic loop and torch are.
        self._asked_at_start = batch
        self._settings = dataclasses.replace(batch, fp16=batch.fp16 and engine.fp16_supported, cuda_graphs=engine.cuda_graphs,
                                             runtime=engine.runtime)
        self.errors = 0
        self._batcher = Batcher(
            self._run_batch,
            max_batch_size=self._effective_batch(self._settings.max_batch_size),
            max_wait_ms=self._settings.max_wait_ms,
            capacity=serve.queue_size,
            max_queued_per_caller=serve.max_queued_per_client,
            is_oom=_is_oom,
            free_memory=_free_cuda_cache,
            after_batch=self._after_batch,
        )
        self._post = PostProcessor(engine, serve.post_workers)  # CPU threads, never the model's worker
        self._requests: deque[Timings] = deque(maxlen=2000)
        self.spans = SpanRing()  # each engine call's stages (app.spans), filled on the worker thread
        self.started_at = time.time()

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, warmup: bool = True) -> "TTSService":
        """Start the worker; warm up every speaker and a few batch shapes so no user pays for it."""
        self._batcher.start()
        asked = self._asked_at_start
        wanted = dataclasses.replace(self._settings, cuda_graphs=asked.cuda_graphs, runtime=asked.runtime)
        self._batcher.between_batches(lambda: self._apply(wanted)).result()  # captured (and exported) by the worker
        if warmup:
            self.warmup()
        return self

    def close(self) -> None:
        self._batcher.stop()
        self._post.close()

    def __enter__(self) -> "TTSService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warmup(self) -> float:
        """Synthesize a short sentence for each speaker in full batches, then batch shapes 1 and 2; return seconds."""
        t0 = time.monotonic()
        size = self._batcher.max_batch_size
        speakers = list(self.engine.speakers)
        for i in range(0, len(speakers), size):
            chunk = [Utterance(WARMUP_TEXT, s, NEUTRAL, seed=0) for s in speakers[i : i + size]]
            for req in self._batcher.submit_many(chunk):
                req.future.result()
        for n in (1, 2):
            for req in self._batcher.submit_many([Utterance(WARMUP_TEXT, speakers[0], NEUTRAL, seed=0)] * n):
                req.future.result()
        return time.monotonic() - t0

    # --- settings ----------------------------------------------------------------------------------
    @property
    def settings(self) -> BatchSettings:
        """The live settings in force now (a change applies at the next batch boundary)."""
        return self._settings

    def _effective_batch(self, requested: int) -> int:
        return max(1, min(requested, self.engine.max_batch_size))

    def update_settings(self, **changes) -> Future:
        """Validate changes now (ValueError names the bad value); apply them between batches.

        Returns a future resolving to the settings in force once applied.
        """
        wanted = dataclasses.replace(self._settings, **changes)  # validates
        return self._batcher.between_batches(lambda: self._apply(wanted))

    def _apply(self, wanted: BatchSettings) -> BatchSettings:
        """On the worker thread: put wanted in force as far as the engine can; return what is in force.

        A switch the engine cannot honour (a capture that failed, or failed its self-check; ONNX Runtime unavailable)
        leaves the fallback in force, with a note, and the settings say so: a later change built from them (the
        service's update_settings, the page, whose switches show what is in force) does not retry it; asking for it
        again does.
        """
        engine = self.engine
        # Asked now, not in force: tried once below (a precision change re-makes what is in force itself, once).
        capture, switch = wanted.cuda_graphs and not engine.cuda_graphs, wanted.runtime != engine.runtime
        if wanted.runtime == "torch" and engine.runtime != "torch":
            engine.set_runtime("torch")  # before a precision change: nothing is exported for a dtype about to go
        if engine.cuda_graphs and not wanted.cuda_graphs:  # off first: a precision change then recaptures nothing
            engine.set_cuda_graphs(False)
        if wanted.fp16 != engine.fp16 or (wanted.fp16 and not engine.fp16_supported):
            engine.set_precision(wanted.fp16)  # recaptures graphs in force for the new dtype (and re-exports ORT parts)
        if capture:
            engine.set_cuda_graphs(True)  # a failed capture leaves the dynamic loop in force, with a note
        if switch and wanted.runtime != engine.runtime:
            engine.set_runtime(wanted.runtime)  # exports once per weights and dtype; a failure leaves torch, with a note
        self._batcher.max_batch_size = self._effective_batch(wanted.max_batch_size)
        self._batcher.max_wait_ms = wanted.max_wait_ms
        self._settings = dataclasses.replace(wanted, fp16=engine.fp16, cuda_graphs=engine.cuda_graphs, runtime=engine.runtime)
        return self._settings

    def apply_settings(self, timeout_s: float = 120.0, **changes) -> BatchSettings:
        """update_settings and wait until the change is in force."""
        return self.update_settings(**changes).result(timeout_s)

    # --- requests ----------------------------------------------------------------------------------
    def plan(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None,
             speed: float = 1.0, pitch: float = 0.0, volume: float = 0.0) -> list[Utterance]:
        """Check a request at the edge and turn it into the engine's items, one per normalised sentence.

        Raises TTSInputError naming the bad value. Seeds are per sentence: from the request's seed if given, else
        from the sentence and speaker, so the same request always sounds the same. Every item carries the controls.
        """
        check_text(text, self.serve.max_chars)
        self.engine.check(speaker, emotion)
        check_controls(speed, pitch, volume)
        sentences = [s for s in textproc.split_sentences(textproc.normalize(text)) if self.engine.speakable(s)]
        if not sentences:
            raise TTSInputError(f"nothing speakable in {text[:40]!r}: it has no Chinese characters, letters or digits")
        if seed is not None:
            seeds = [(int(seed) + i) & 0x7FFFFFFF for i in range(len(sentences))]
        else:
            seeds = [zlib.crc32(f"{speaker}|{s}".encode()) & 0x7FFFFFFF for s in sentences]
        controls = dict(speed=float(speed), pitch=float(pitch), volume=float(volume))
        return [Utterance(s, speaker, emotion, k, **controls) for s, k in zip(sentences, seeds)]

    @property
    def post(self) -> PostProcessor:
        """What the service renders after the model (emotion by rule, signal-level controls), on its CPU pool."""
        return self._post

    def submit(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None, timeout_s: float | None = None,
               speed: float = 1.0, pitch: float = 0.0, volume: float = 0.0, caller: Hashable = None) -> Result:
        """Synthesize a whole text (blocking): its sentences are queued together, so they batch.

        caller: who asks (a page session, a user): batches are shared fairly between callers, each under its cap.
        """
        t0 = time.monotonic()  # the request's clock includes its frontend (checks, normalisation, splitting)
        utts = self.plan(text, speaker, emotion, seed, speed, pitch, volume)
        timeout_s = timeout_s if timeout_s is not None else self.serve.request_timeout_s
        jobs = self._enqueue(utts, timeout_s, caller)
        return self._result(utts, jobs, self._collect(jobs, t0, timeout_s), t0)

    async def submit_async(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None,
                           timeout_s: float | None = None, caller: Hashable = None, **controls) -> Result:
        """submit() for an event loop (a Serve replica): awaits the answers instead of holding a thread.

        controls are the request's speed/pitch/volume keywords, passed on to plan() unchanged.
        """
        t0 = time.monotonic()
        utts = self.plan(text, speaker, emotion, seed, **controls)
        timeout_s = timeout_s if timeout_s is not None else self.serve.request_timeout_s
        jobs = self._enqueue(utts, timeout_s, caller)
        return self._result(utts, jobs, await self._collect_async(jobs, t0, timeout_s), t0)

    def stream(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None, timeout_s: float | None = None,
               speed: float = 1.0, pitch: float = 0.0, volume: float = 0.0, caller: Hashable = None) -> Iterator[Piece]:
        """Yield each sentence's audio in order as soon as it is ready.

        The first sentence is queued alone and the rest once it has started, so it runs in a small batch and its
        audio arrives early; the rest still batch together (and with other callers' items).
        """
        t0 = time.monotonic()  # the request's clock includes its frontend (checks, normalisation, splitting)
        utts = self.plan(text, speaker, emotion, seed, speed, pitch, volume)
        timeout_s = timeout_s if timeout_s is not None else self.serve.request_timeout_s
        jobs = self._enqueue(utts[:1], timeout_s, caller, cap_count=len(utts))  # the whole text counts against the cap
        try:
            if len(utts) > 1:
                jobs[0].request.started.wait(timeout_s)
                jobs += self._enqueue(utts[1:], timeout_s, caller, cap_count=0)
            for i, job in enumerate(jobs):
                yield self._piece(utts, i, self._collect([job], t0, timeout_s)[0], t0)
            self._record(jobs, t0, utts[0])
        finally:
            for job in jobs:  # a consumer that stops early (closed browser) frees the queue and the pool
                job.cancel()

    async def stream_async(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None,
                           timeout_s: float | None = None, caller: Hashable = None, **controls) -> AsyncIterator[Piece]:
        """stream() for an event loop: the same order and batching, awaiting the answers."""
        t0 = time.monotonic()
        utts = self.plan(text, speaker, emotion, seed, **controls)
        timeout_s = timeout_s if timeout_s is not None else self.serve.request_timeout_s
        jobs = self._enqueue(utts[:1], timeout_s, caller, cap_count=len(utts))
        try:
            if len(utts) > 1:
                await _started(jobs[0].request, timeout_s)
                jobs += self._enqueue(utts[1:], timeout_s, caller, cap_count=0)
            for i, job in enumerate(jobs):
                yield self._piece(utts, i, (await self._collect_async([job], t0, timeout_s))[0], t0)
            self._record(jobs, t0, utts[0])
        finally:
            for job in jobs:  # a caller that goes away (cancelled task) frees the queue and the pool
                job.cancel()

    def _enqueue(self, utts: list[Utterance], timeout_s: float, caller: Hashable = None, cap_count: int | None = None) -> list[Job]:
        """Queue the items for the model; those with emotion or controls to render follow on the CPU pool."""
        reqs = self._batcher.submit_many(utts, timeout_s=timeout_s, caller=caller, cap_count=cap_count)
        return [self._post.follow(req, item) for req, item in zip(reqs, utts)]

    def _collect(self, jobs: list[Job], t0: float, timeout_s: float) -> list[np.ndarray]:
        with self._answering(jobs, timeout_s):
            return [job.future.result(max(0.0, timeout_s - (time.monotonic() - t0))) for job in jobs]

    async def _collect_async(self, jobs: list[Job], t0: float, timeout_s: float) -> list[np.ndarray]:
        with self._answering(jobs, timeout_s):
            out = []
            for job in jobs:
                remaining = max(0.0, timeout_s - (time.monotonic() - t0))
                out.append(await asyncio.wait_for(asyncio.wrap_future(job.future), remaining))
            return out

    @contextmanager
    def _answering(self, jobs: list[Job], timeout_s: float) -> Iterator[None]:
        """Turn a caller's wait into its answer: a timeout becomes a SynthesisError; unfinished items are skipped."""
        try:
            yield
        except TimeoutError:  # concurrent.futures' and asyncio's timeouts are both TimeoutError since 3.11
            raise SynthesisError(f"timed out after {timeout_s:.0f} s waiting for synthesis") from None
        except SynthesisError:
            self.errors += 1
            raise
        finally:
            for job in jobs:
                job.cancel()  # no-op for finished ones; skips the rest if we gave up

    def _result(self, utts: list[Utterance], jobs: list[Job], pieces: list[np.ndarray], t0: float) -> Result:
        rate, t_join = self.engine.sample_rate, time.perf_counter()
        audio = join_sentences(pieces, rate)
        return Result(audio, rate, self._record(jobs, t0, utts[0], time.perf_counter() - t_join), [u.text for u in utts])

    def _piece(self, utts: list[Utterance], index: int, audio: np.ndarray, t0: float) -> Piece:
        return Piece(index, len(utts), utts[index].text, audio, self.engine.sample_rate, time.monotonic() - t0)

    def _record(self, jobs: list[Job], t0: float, first: Utterance, join_s: float = 0.0) -> Timings:
        """The finished request's timings and per-stage split, kept in the request log."""
        timings = request_timings(jobs, t0, first, self.engine.sample_rate, self.spans, join_s)
        self._requests.append(timings)
        log.info("request: %s", timings.summary())
        return timings

    # --- worker side -------------------------------------------------------------------------------
    def _run_batch(self, batch: list[Utterance]) -> list[np.ndarray]:
        with self.spans.batch(self._batcher.current_batch_id, len(batch), self.engine.device):  # the engine marks stages
            return self.engine.synthesize(batch)

    def between_batches(self, action) -> Future:
        """Run action on the worker thread before the next batch (e.g. attach a profiler); returns its future."""
        return self._batcher.between_batches(action)

    def _after_batch(self) -> None:
        if self._settings.clear_cache:
            _free_cuda_cache()

    # --- introspection -----------------------------------------------------------------------------
    def queue_depth(self) -> int:
        return self._batcher.depth()

    @property
    def request_log(self) -> list[Timings]:
        """Recent finished requests (their emotion, controls and timings), oldest first."""
        return list(self._requests)

    @property
    def batch_log(self):
        """Recent engine calls (BatchRecord: t, size, compute_s, queue_depth, ok), oldest first."""
        return list(self._batcher.log)

    @property
    def span_log(self) -> list[BatchSpans]:
        """Recent engine calls' stages (app.spans.BatchSpans), oldest first."""
        return self.spans.records()

    def stats(self) -> dict[str, float]:
        """Cheap counters for the monitor's probe."""
        last = self._batcher.log[-1].size if self._batcher.log else 0
        return {"queue_depth": self.queue_depth(), "batches_run": self._batcher.batches_run, "last_batch_size": last}

    def health(self) -> dict:
        """Readiness and counters as plain JSON-able data."""
        b = self._batcher
        return {
            "status": "ok" if self.engine.loaded else "not loaded",
            **engine_fields(self.engine),
            "model_loaded": self.engine.loaded,
            "device": self.engine.device,
            "settings": dataclasses.asdict(self._settings),
            "cuda_graphs": self.engine.cuda_graphs,  # in force: False means the dynamic decoding loop
            "cuda_graphs_detail": self.engine.cuda_graphs_detail or None,
            "runtime_detail": self.engine.runtime_detail or None,  # what ONNX Runtime runs, on which provider
            "note": "; ".join(self.engine.notes) or None,
            "worker_alive": b.alive(),
            "queue_depth": b.depth(),
            "queue_capacity": b.capacity,
            "batches_run": b.batches_run,
            "items_run": b.items_run,
            "items_failed": b.items_failed,
            "items_dropped": b.items_dropped,
            "request_errors": self.errors,
            "uptime_s": round(time.time() - self.started_at, 1),
            "memory": memory_figures(),
            "stages": stage_health(self.request_log),  # the last request's split and the window's share per stage
        }


def engine_fields(engine: EngineBase) -> dict:
    """The engine's part of health(): name, precision in force, sample rate, how many speakers, which emotions, the
    GPU self-check's verdicts and the latest graph capture's count and time."""
    return {"engine": engine.name, "precision": engine.precision, "sample_rate": engine.sample_rate,
            "speakers": len(engine.speakers), "emotions": list(engine.emotions), "runtime": engine.runtime,
            "gpu_self_check": engine.gpu_self_check, "cuda_graphs_capture": engine.graphs_capture}


def memory_figures() -> dict[str, float | None]:
    """Process RSS and, when CUDA is in use, PyTorch allocator figures in MiB (None where not available)."""
    figures = {"rss_mib": rss_mib(), **torch_cuda_mib()}
    return {k: None if math.isnan(v) else v for k, v in figures.items()}


async def _started(req: Request, timeout_s: float, poll_s: float = 0.002) -> None:
    """Wait, without holding a thread, until the worker takes req into a batch (or timeout_s passes)."""
    deadline = time.monotonic() + timeout_s
    while not req.started.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
