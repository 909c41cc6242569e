"""Prosody post-processing: what each emotion rule does to real embedded speech, what it costs per second of audio,
and what it does to the service's throughput (8 concurrent clients, all neutral vs mixed emotions).

    python -m profiling.bench.prosody [--speakers Aijia,biaobei] [--out prosody.csv]
    python -m profiling.bench.prosody --throughput [--clients 8] [--texts 16] [--post-workers 2]

Measures the output waveforms afresh with pyworld's Harvest tracker: F0 level change (semitones, median of voiced
frames), F0 range ratio (10-90 percentile span, final syllable left out), rate ratio (speech span) and loudness change
(dB, active frames), each against neutral on the same text, speaker and seed; the final syllable's boundary movement
(semitones, against the same rendering without it); and CPU seconds of post-processing per audio second.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyworld

from app.engines.base import Utterance
from app.prosody import BOUNDARY_S, EMOTION_RULES, NEUTRAL, Adjustment, EmotionRule, render

HOP_MS = 5.0
SENTENCES = [  # our own, not the workload's: statements, questions, exclamations; all tones
    "今天的天气真不错，我们去公园走走吧。",
    "这个消息让所有人都感到十分意外。",
    "请把桌子上的那本书递给我。",
    "火车将在下午三点准时到达北京站。",
    "他昨天晚上一直工作到很晚才回家。",
    "你为什么不早点告诉我这件事？",
    "孩子们在操场上开心地踢着足球。",
    "我们明天一起去看望外婆好吗？",
    "这家餐厅的菜味道非常好。",
    "窗外下起了大雨，路上的行人越来越少。",
    "会议推迟到下周一上午十点。",
    "别担心，一切都会好起来的。",
]


@dataclass(frozen=True, eq=False)
class Prosody:
    """Prosodic figures of one waveform."""

    f0_hz: np.ndarray  # Harvest F0 every HOP_MS (0: unvoiced)
    f0_median_st: float  # median F0 of voiced frames, semitones re 1 Hz
    f0_range_st: float  # 90th - 10th percentile of voiced F0 before the final syllable, semitones
    span_s: float  # first to last frame within 35 dB of the loudest: how long the speech lasts
    loudness_db: float  # RMS of frames within 40 dB of the loudest, dBFS


def measure(audio: np.ndarray, sample_rate: int) -> Prosody:
    """Harvest F0 and frame energies -> Prosody (raises ValueError on audio without enough voiced frames)."""
    x = np.asarray(audio, dtype=np.float64)
    f0, _ = pyworld.harvest(x, sample_rate, f0_floor=60.0, f0_ceil=700.0, frame_period=HOP_MS)
    voiced = np.flatnonzero(f0 > 0)
    tail = round(BOUNDARY_S * 1000 / HOP_MS)
    if len(voiced) < 2 * tail:
        raise ValueError(f"only {len(voiced)} voiced frames: too short to measure")
    st = 12.0 * np.log2(f0[voiced])
    hop = int(sample_rate * HOP_MS / 1000)
    n = len(x) // hop
    energy = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-3.5))
    active = energy >= energy.max() * 10 ** (-4.0)
    return Prosody(
        f0_hz=f0,
        f0_median_st=float(np.median(st)),
        f0_range_st=float(np.percentile(st[:-tail], 90) - np.percentile(st[:-tail], 10)),
        span_s=(loud[-1] - loud[0] + 1) * HOP_MS / 1000,
        loudness_db=float(10 * np.log10(np.mean(energy[active]))),
    )


def boundary_move(flat: Prosody, bent: Prosody) -> float:
    """How far the final syllable moves, semitones (> 0 rises): the same rendering with and without the boundary
    contour, frame by frame, final syllable against the rest (a linear ramp shows about half its end value here)."""
    a, b = flat.f0_hz, bent.f0_hz
    n = min(len(a), len(b))
    both = np.flatnonzero((a[:n] > 0) & (b[:n] > 0))
    tail = round(BOUNDARY_S * 1000 / HOP_MS)
    if len(both) < 2 * tail:
        raise ValueError("too few frames voiced in both to compare")
    diff = 12.0 * np.log2(b[both] / a[both])
    return float(np.median(diff[-tail:]) - np.median(diff[:-tail]))


def without_boundary(emotion: str) -> dict[str, EmotionRule]:
    """The rule table with this emotion's boundary contour taken out (the reference boundary_move compares with)."""
    return {**EMOTION_RULES, emotion: dataclasses.replace(EMOTION_RULES[emotion], boundary_st=0.0)}


def compare(neutral: Prosody, other: Prosody) -> dict[str, float]:
    """Changes against neutral: level (st), range ratio, rate ratio (> 1 faster), loudness (dB)."""
    return {
        "f0_level_st": other.f0_median_st - neutral.f0_median_st,
        "f0_range_ratio": other.f0_range_st / neutral.f0_range_st,
        "rate_ratio": neutral.span_s / other.span_s,
        "loudness_db": other.loudness_db - neutral.loudness_db,
    }


def effects_table(engine, speakers: list[str], n_sentences: int, out: str | None) -> None:
    """Per emotion against neutral on each voice: the rule, the measured changes, the CPU cost."""
    rows = []
    for speaker in speakers:
        for i, text in enumerate(SENTENCES[:n_sentences]):
            audio = engine.synthesize([Utterance(text, speaker, seed=i)])[0]
            base = measure(audio, engine.sample_rate)
            for emotion in EMOTION_RULES:
                if emotion == NEUTRAL:
                    continue
                t0 = time.process_time()
                rendered = render(audio, engine.sample_rate, Adjustment(emotion))
                cpu_s = time.process_time() - t0
                out_m = measure(rendered, engine.sample_rate)
                flat = measure(render(audio, engine.sample_rate, Adjustment(emotion), without_boundary(emotion)), engine.sample_rate)
                rows.append({"speaker": speaker, "sentence": i, "emotion": emotion, "audio_s": len(audio) / engine.sample_rate,
                             "cpu_s_per_audio_s": cpu_s / (len(audio) / engine.sample_rate),
                             **compare(base, out_m), "boundary_st": boundary_move(flat, out_m)})
    df = pd.DataFrame(rows)
    if out:
        df.to_csv(out, index=False)
    table = df.groupby(["speaker", "emotion"]).median(numeric_only=True).drop(columns=["sentence"]).round(3)
    wanted = pd.DataFrame({e: dataclasses.asdict(r) for e, r in EMOTION_RULES.items() if e != NEUTRAL}).T
    print("rules (the table):\n" + wanted.to_string())
    print("\nmeasured, median over sentences (boundary_st: median move of the final syllable, about half the rule's end value):\n"
          + table.to_string())
    print(f"\npost-processing CPU cost: median {df['cpu_s_per_audio_s'].median():.3f} s per audio second "
          f"(p90 {df['cpu_s_per_audio_s'].quantile(0.9):.3f}), {len(df)} renders")


def throughput_table(engine, clients: int, n_texts: int, post_workers: int, repeats: int) -> None:
    """The same workload from N concurrent clients, all neutral vs emotions cycling over all six (1 in 6 neutral)."""
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings
    from profiling.loadgen import CallRecord, load_workload, run_load, summarize

    serve = ServeSettings(queue_size=4096, post_workers=post_workers)
    service = TTSService(engine, BatchSettings(fp16=False, max_batch_size=8), serve).start(warmup=True)
    texts, rows = load_workload()[:n_texts], []
    try:
        for mix in ("all neutral", "mixed emotions", "all neutral", "mixed emotions"):  # twice, interleaved: drift shows
            emotions = itertools.cycle(EMOTION_RULES if mix == "mixed emotions" else [NEUTRAL])
            post_s: list[float] = []

            def call(text: str) -> CallRecord:
                t0 = time.monotonic()
                res = service.submit(text, engine.default_speaker, next(emotions))
                post_s.append(res.timings.post_s)
                t = res.timings
                return CallRecord(text, time.monotonic() - t0, t.audio_s, t.first_audio_s, t.queue_wait_s, t.batch_sizes)

            n_batches = len(service.batch_log)
            records, wall = run_load(call, texts, clients, repeats)
            batches = service.batch_log[n_batches:]
            summary = summarize(records, wall)
            rows.append({"mix": mix, "requests": summary["requests"], "errors": summary["errors"],
                         "requests_per_s": summary["requests"] / wall, "audio_s_per_s": summary["throughput_audio_s_per_s"],
                         "p50_latency_s": summary["p50_latency_s"], "p95_latency_s": summary["p95_latency_s"],
                         "model_busy_s": sum(b.compute_s for b in batches),
                         "model_s_per_sentence": sum(b.compute_s for b in batches) / sum(b.size for b in batches),
                         "mean_batch": statistics.fmean(b.size for b in batches), "post_s_total": sum(post_s), "wall_s": wall})
            print(f"{mix}: {rows[-1]['requests_per_s']:.2f} req/s", flush=True)
    finally:
        service.close()
    print(f"\n{clients} concurrent clients, {len(texts)} texts x {repeats}, max batch 8, {post_workers} post-processing "
          f"thread(s), {engine.device}:\n" + pd.DataFrame(rows).round(3).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", default="Aijia,biaobei")
    ap.add_argument("--sentences", type=int, default=len(SENTENCES))
    ap.add_argument("--out", default=None, help="CSV of every (speaker, sentence, emotion) row")
    ap.add_argument("--throughput", action="store_true", help="service throughput, all neutral vs mixed emotions")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--texts", type=int, default=16, help="texts of the shipped workload")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--post-workers", type=int, default=2)
    args = ap.parse_args()
    from app.engines.embedded.engine import EmbeddedEngine

    engine = EmbeddedEngine()
    engine.load("cpu", fp16=False)
    if args.throughput:
        throughput_table(engine, args.clients, args.texts, args.post_workers, args.repeats)
    else:
        effects_table(engine, args.speakers.split(","), args.sentences, args.out)


if __name__ == "__main__":
    main()
