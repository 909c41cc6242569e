"""Closed-loop load generator: N concurrent clients against the service in-process or a running app."""
from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from app.spans import REQUEST_STAGES

WORKLOAD_FILE = Path(__file__).with_name("workload_zh.txt")


def workload_sentences(texts: Sequence[str]) -> list[str]:
    """The normalised sentences the service sends to the engine for these texts, in order."""
    from app import text as textproc

    return [s for t in texts for s in textproc.split_sentences(textproc.normalize(t))]


def load_workload(path: str | Path = WORKLOAD_FILE) -> list[str]:
    """Non-empty, non-comment lines of a text file."""
    lines = Path(path).read_text(encoding="utf8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@dataclass
class CallRecord:
    """One client call as the client saw it."""

    text: str
    latency_s: float  # call to full answer
    audio_s: float = 0.0  # seconds of audio returned
    first_audio_s: float = float("nan")  # call to first audio (streaming), else = latency_s
    queue_wait_s: float = float("nan")
    batch_sizes: list[int] = field(default_factory=list)
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (app.timings), in-process calls only


def service_caller(service, speaker: str | None = None, emotion: str = "neutral", stream: bool = False) -> Callable[[str], CallRecord]:
    """A client that calls TTSService.submit (or .stream) in this process."""
    speaker = speaker or service.engine.default_speaker

    def call(text: str) -> CallRecord:
        t0 = time.monotonic()
        try:
            if stream:
                first, audio_s = None, 0.0
                for piece in service.stream(text, speaker, emotion):
                    first = first if first is not None else time.monotonic() - t0
                    audio_s += len(piece.audio) / piece.sample_rate
                return CallRecord(text, time.monotonic() - t0, audio_s, first)
            res = service.submit(text, speaker, emotion)
            t = res.timings
            return CallRecord(text, time.monotonic() - t0, t.audio_s, t.first_audio_s, t.queue_wait_s, t.batch_sizes,
                              stages=dict(t.stages))
        except Exception as exc:  # recorded, not raised: a load run reports errors as a number
            return CallRecord(text, time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}")

    return call


def app_caller(url: str, speaker: str, emotion: str = "neutral") -> Callable[[str], CallRecord]:
    """A client that calls a running app's /synthesize endpoint through gradio_client."""
    import wave

    from gradio_client import Client

    local = threading.local()

    def call(text: str) -> CallRecord:
        if not hasattr(local, "client"):
            local.client = Client(url, verbose=False)
        t0 = time.monotonic()
        try:
            path = local.client.predict(text, speaker, emotion, api_name="/synthesize")
            with wave.open(path, "rb") as w:
                audio_s = w.getnframes() / w.getframerate()
            latency = time.monotonic() - t0
            return CallRecord(text, latency, audio_s, latency)
        except Exception as exc:
            return CallRecord(text, time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}")

    return call


def run_load(call: Callable[[str], CallRecord], texts: Sequence[str], concurrency: int, repeats: int = 1) -> tuple[list[CallRecord], float]:
    """Each of `concurrency` clients takes the next text as soon as its last call returns; returns records and wall seconds."""
    jobs = iter(list(texts) * repeats)
    lock = threading.Lock()
    records: list[CallRecord] = []

    def client() -> None:
        while True:
            with lock:
                text = next(jobs, None)
            if text is None:
                return
            rec = call(text)
            with lock:
                records.append(rec)

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    return records, time.monotonic() - t0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(records: Sequence[CallRecord], wall_s: float) -> dict[str, float]:
    """p50/p95 latency, throughput in audio seconds per wall second, aggregate RTF, batch sizes, errors, and each
    stage's share of the time the requests spent in any stage (share_<stage>; NaN when the calls carry no split)."""
    ok = [r for r in records if r.error is None]
    stage_s = {stage: sum(r.stages.get(stage, 0.0) for r in ok) for stage in REQUEST_STAGES}
    staged_s = sum(stage_s.values())
    latencies = [r.latency_s for r in ok]
    audio_s = sum(r.audio_s for r in ok)
    sizes = list(itertools.chain.from_iterable(r.batch_sizes for r in ok))
    first = [r.first_audio_s for r in ok if r.first_audio_s == r.first_audio_s]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "p50_latency_s": percentile(latencies, 50),
        "p95_latency_s": percentile(latencies, 95),
        "p50_first_audio_s": percentile(first, 50),
        "throughput_audio_s_per_s": audio_s / wall_s if wall_s else float("nan"),
        "rtf": wall_s / audio_s if audio_s else float("nan"),
        "mean_batch_size": statistics.fmean(sizes) if sizes else float("nan"),
        "audio_s": audio_s,
        "wall_s": wall_s,
        **{f"share_{stage}": seconds / staged_s if staged_s else float("nan") for stage, seconds in stage_s.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Concurrent clients against a running app's /synthesize endpoint.")
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--speaker", default="Aijia")
    p.add_argument("--emotion", default="neutral")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    args = p.parse_args(argv)
    records, wall = run_load(app_caller(args.url, args.speaker, args.emotion), load_workload(args.texts), args.concurrency, args.repeats)
    for key, value in summarize(records, wall).items():
        print(f"{key:>26}: {value:.3f}" if isinstance(value, float) else f"{key:>26}: {value}")
    for r in records:
        if r.error:
            print("error:", r.error)


if __name__ == "__main__":
    main()
