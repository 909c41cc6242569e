"""Post-processing after the batch: each item's rule-rendered emotion and signal-level controls, on a small CPU pool.

The model's worker thread only hands an item's audio over (a future callback); app.prosody runs on the pool, so the
batch loop never waits for signal processing. An item with nothing to do is never touched: its caller waits on the
batcher's own future and gets the engine's samples as they are.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app import prosody
from app.batcher import Request
from app.engines.base import EMOTIONS_RULES, NEUTRAL, EngineBase, Utterance
from app.errors import SynthesisError

POST_NICENESS = 10  # the pool's threads yield the CPU to the model's worker (Linux: per-thread nice) when cores are short


def _lower_priority() -> None:
    """Pool thread initializer: where the OS allows it, run this thread at a lower priority than the model's worker."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POST_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: same priority, still off the worker thread
        pass


@dataclass(eq=False)
class Job:
    """One sentence on its way: the batcher's request and the future its caller waits on."""

    request: Request
    future: Future  # the final audio: the request's own future when nothing is post-processed, else the pool's
    post_s: float = 0.0  # time its post-processing took
    post_done_at: float | None = None  # monotonic time its post-processing finished

    @property
    def done_at(self) -> float:
        """When its final audio was ready (monotonic)."""
        return self.request.done_at if self.future is self.request.future else self.post_done_at

    def cancel(self) -> None:
        """The caller gave up: skip the item if it is still queued and its post-processing if not started."""
        self.future.cancel()
        self.request.future.cancel()


class PostProcessor:
    """What is left to the signal after the model, for one engine, and the CPU threads that do it."""

    def __init__(self, engine: EngineBase, workers: int) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tts-post", initializer=_lower_priority)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def adjustment(self, item: Utterance) -> prosody.Adjustment:
        """Its emotion if the engine renders emotions by rule, and the controls the engine does not render itself."""
        inside = self.engine.controls_in_model
        return prosody.Adjustment(
            emotion=item.emotion if self.engine.emotion_kind == EMOTIONS_RULES else NEUTRAL,
            speed=1.0 if "speed" in inside else item.speed,
            pitch_st=0.0 if "pitch" in inside else item.pitch,
            volume_db=0.0 if "volume" in inside else item.volume,
        )

    def follow(self, request: Request, item: Utterance) -> Job:
        """The job for a queued item: post-processed on the pool once the batch answers, or untouched."""
        adjustment = self.adjustment(item)
        if adjustment.identity:
            return Job(request, request.future)
        job = Job(request, Future())
        request.future.add_done_callback(lambda done: self._hand_over(done, job, adjustment))
        return job

    def _hand_over(self, done: Future, job: Job, adjustment: prosody.Adjustment) -> None:
        """Runs where the item's future resolved (the model's worker thread): pass the audio on to the pool."""
        if done.cancelled():
            job.future.cancel()
            return
        error = done.exception()
        if error is None:
            try:
                self._pool.submit(self._render, job, done.result(), adjustment)
                return
            except RuntimeError:  # the pool is shut down
                error = SynthesisError("the service is shutting down")
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(error)

    def _render(self, job: Job, audio: np.ndarray, adjustment: prosody.Adjustment) -> None:
        """On the pool: render the item's emotion and controls (skipped if its caller gave up)."""
        if not job.future.set_running_or_notify_cancel():
            return
        t0 = time.monotonic()
        try:
            out, error = prosody.render(audio, self.engine.sample_rate, adjustment), None
        except Exception as exc:  # one item's failure is its own error, never the pool's
            out, error = None, SynthesisError(f"post-processing failed: {type(exc).__name__}: {exc}")
        job.post_done_at = time.monotonic()
        job.post_s = job.post_done_at - t0
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(out)
