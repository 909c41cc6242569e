"""Where one request's time went: its timings and its per-stage split, assembled from its sentences' batches."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from app.engines.base import NEUTRAL, Utterance
from app.postprocess import Job
from app.spans import OTHER, REQUEST_STAGES, SpanRing

SPLIT_WINDOW_S = 120.0  # /health's per-stage share covers the requests of the last two minutes (the panel's window)


@dataclass
class Timings:
    """Where one request's time went (seconds)."""

    total_s: float = 0.0  # call (before its text was checked and split) to last sentence done
    queue_wait_s: float = 0.0  # longest wait of any of its sentences before its batch started
    compute_s: float = 0.0  # summed wall time of the distinct engine calls its sentences ran in
    first_audio_s: float = 0.0  # call to the first sentence's audio being ready
    audio_s: float = 0.0  # seconds of audio returned
    rtf: float = 0.0  # total_s / audio_s: below 1 is faster than real time
    sentences: int = 0
    batches: int = 0  # distinct engine calls
    batch_sizes: list[int] = field(default_factory=list)  # size of the engine call each sentence ran in
    emotion: str = NEUTRAL  # the request's emotion
    speed: float = 1.0  # its tempo factor
    pitch: float = 0.0  # its pitch shift, semitones
    volume: float = 0.0  # its loudness change, dB
    post_s: float = 0.0  # summed post-processing time of its sentences on the CPU pool (0: none was needed)
    # Seconds per stage (app.spans.REQUEST_STAGES): its own frontend, queue wait, post-processing and joining, and
    # the stages of the engine calls its sentences ran in (each call counted once, as in compute_s).
    stages: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0  # time.time() when it was answered

    def summary(self) -> str:
        """One line for the UI and the request log."""
        sizes = ",".join(map(str, self.batch_sizes))
        post = f"; post-processing {self.post_s:.2f} s" if self.post_s else ""
        return (
            f"{self.audio_s:.1f} s of audio in {self.total_s:.2f} s (RTF {self.rtf:.2f}); first audio {self.first_audio_s:.2f} s; "
            f"queue wait {self.queue_wait_s:.2f} s; {self.sentences} sentence(s) in {self.batches} batch(es) of size [{sizes}]; "
            f"{self.emotion}, speed {self.speed:g}x, pitch {self.pitch:+g} st, volume {self.volume:+g} dB{post}; "
            f"stages {split_line(self.stages)}"
        )


def split_line(stages: dict[str, float]) -> str:
    """"frontend 0.01, queue 0.20, decoder 1.31 s": the stages that took any time, in time order."""
    shown = [f"{stage} {stages[stage]:.2f}" for stage in REQUEST_STAGES if stages.get(stage, 0.0) >= 0.005]
    return (", ".join(shown) + " s") if shown else "none recorded"


def request_timings(jobs: Sequence[Job], t0: float, first: Utterance, sample_rate: int, spans: SpanRing,
                    join_s: float = 0.0) -> Timings:
    """A finished request's timings from its jobs (t0: monotonic time of the call; join_s: joining its audio)."""
    reqs = [job.request for job in jobs]
    done = max(job.done_at for job in jobs)
    audio_s = sum(len(job.future.result()) for job in jobs) / sample_rate
    batches = {r.batch_id: r.compute_s for r in reqs}
    total = done - t0
    post_s = sum(job.post_s for job in jobs)
    queue_wait_s = max(r.batched_at - r.enqueued_at for r in reqs)
    stages = dict.fromkeys(REQUEST_STAGES, 0.0)
    stages.update(frontend=max(0.0, min(r.enqueued_at for r in reqs) - t0), queue=queue_wait_s, post=post_s, audio=join_s)
    for batch_id, compute_s in batches.items():
        record = spans.get(batch_id)
        inside = record.totals() if record is not None else {OTHER: compute_s}  # evicted from the ring: unsplit
        for stage, seconds in inside.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return Timings(
        total_s=total,
        queue_wait_s=queue_wait_s,
        compute_s=sum(batches.values()),
        first_audio_s=jobs[0].done_at - t0,
        audio_s=audio_s,
        rtf=total / audio_s if audio_s else float("nan"),
        sentences=len(reqs),
        batches=len(batches),
        batch_sizes=[r.batch_size for r in reqs],
        emotion=first.emotion,
        speed=first.speed,
        pitch=first.pitch,
        volume=first.volume,
        post_s=post_s,
        stages=stages,
        finished_at=time.time(),
    )


def stage_share(requests: Sequence[Timings]) -> dict[str, float]:
    """Each stage's share (0-1) of the time these requests spent in any stage; empty without requests."""
    totals = {stage: sum(t.stages.get(stage, 0.0) for t in requests) for stage in REQUEST_STAGES}
    whole = sum(totals.values())
    return {stage: seconds / whole for stage, seconds in totals.items()} if whole > 0 else {}


def stage_health(requests: Sequence[Timings], window_s: float = SPLIT_WINDOW_S) -> dict:
    """/health's part: the last request's split and every stage's share over the window's requests."""
    recent = [t for t in requests if t.finished_at >= time.time() - window_s]
    last = requests[-1] if requests else None
    return {
        "last_request_s": {k: round(v, 6) for k, v in last.stages.items()} if last is not None else None,
        "window_s": window_s,
        "window_requests": len(recent),
        "window_share": {k: round(v, 6) for k, v in stage_share(recent).items()},
    }
