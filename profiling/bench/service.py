"""Service benchmark: N concurrent clients x max batch size x precision x CUDA graphs -> latency, throughput,
batches formed, GPU utilisation; and time to first audio for a long paragraph, streamed vs whole.

python -m profiling.bench.service --device cpu --precision fp32 --clients 1,4,8,16 --batch 1,4,8
python -m profiling.bench.service --device cuda --precision fp32,fp16 --cuda-graphs on,off --clients 8 --batch 8
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd

from profiling.loadgen import WORKLOAD_FILE, load_workload, run_load, service_caller, summarize

PARAGRAPH = "这是一段用来测试流式合成的长文本。它有好几句话，每一句都不太长。第一句先出来，后面的句子再慢慢跟上。这样用户可以更早听到声音。"


def start_embedded_service(device: str, symbols: str | None, max_batch_size: int = 8, max_wait_ms: float = 15.0):
    """The benchmarks' resident service: the embedded engine in FP32 (phkit, or precomputed symbol ids), graphs off,
    a queue deep enough for any load they send, warmed up. Returns (engine, service)."""
    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings

    engine = EmbeddedEngine(frontend=precomputed_frontend(symbols) if symbols else None)
    engine.load(device, fp16=False)
    settings = BatchSettings(fp16=False, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, cuda_graphs=False)
    return engine, TTSService(engine, settings, ServeSettings(queue_size=4096)).start(warmup=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", help="fp32,fp16")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--batch", default="1,4,8")
    p.add_argument("--cuda-graphs", default="off", help="comma list of on/off (on needs CUDA)")
    p.add_argument("--no-paragraph", action="store_true", help="skip the time-to-first-audio paragraph")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max-wait-ms", type=float, default=15.0)
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    p.add_argument("--symbols", help="precomputed symbol ids (JSON) instead of phkit")
    p.add_argument("--out", help="CSV of the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from profiling.monitor import Monitor

    engine, service = start_embedded_service(args.device, args.symbols, max_wait_ms=args.max_wait_ms)
    monitor = Monitor(interval_s=0.1).start()
    texts = load_workload(args.texts)
    rows, ttfa = [], []

    def save() -> None:  # after every row: a run cut off keeps what it measured (the paragraph rows: kind first_audio)
        if args.out:
            pd.concat([pd.DataFrame(rows).assign(kind="load"), pd.DataFrame(ttfa).assign(kind="first_audio")]).to_csv(
                args.out, index=False)

    try:
        for precision in args.precision.split(","):
            if precision == "fp16" and not engine.fp16_supported:
                rows.append({"precision": "fp16", "status": f"skipped: FP16 needs CUDA ({engine.device})"})
                save()
                continue
            for graphs in [g.strip() == "on" for g in args.cuda_graphs.split(",")]:
                if graphs and not engine.cuda_graphs_supported:
                    rows.append({"precision": precision, "cuda_graphs": True, "status": f"skipped: CUDA graphs need CUDA ({engine.device})"})
                    save()
                    continue
                for size in [int(b) for b in args.batch.split(",")]:
                    applied = service.apply_settings(fp16=precision == "fp16", max_batch_size=size, cuda_graphs=graphs)
                    for clients in [int(c) for c in args.clients.split(",")]:
                        n_batches, t0 = len(service.batch_log), time.time()
                        records, wall = run_load(service_caller(service), texts, clients, args.repeats)
                        formed = [b.size for b in service.batch_log[n_batches:]]
                        row = {"precision": engine.precision, "cuda_graphs": applied.cuda_graphs, "max_batch": size, "clients": clients,
                               **summarize(records, wall)}
                        row["mean_batch_formed"] = sum(formed) / len(formed) if formed else float("nan")
                        row["mean_gpu_util_pct"] = monitor.summary(t0, time.time())["mean_gpu_util_pct"]
                        rows.append(row)
                        save()
                        print(f"{engine.precision} graphs {applied.cuda_graphs} batch {size} clients {clients}: "
                              f"p95 {row['p95_latency_s']:.3f} s", file=sys.stderr, flush=True)
            if args.no_paragraph:
                continue
            for mode in ("whole", "streamed"):
                t0 = time.monotonic()
                if mode == "whole":
                    res = service.submit(PARAGRAPH, engine.default_speaker)
                    first, total = time.monotonic() - t0, res.timings.total_s
                else:
                    first = None
                    for piece in service.stream(PARAGRAPH, engine.default_speaker):
                        first = first if first is not None else time.monotonic() - t0
                    total = time.monotonic() - t0
                ttfa.append({"precision": engine.precision, "cuda_graphs": service.settings.cuda_graphs,
                             "max_batch": service.settings.max_batch_size, "mode": mode,
                             "first_audio_s": first, "total_s": total})
                save()
    finally:
        monitor.close()
        service.close()
    df, tf = pd.DataFrame(rows), pd.DataFrame(ttfa)
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        cols = [c for c in ["precision", "cuda_graphs", "max_batch", "clients", "requests", "errors", "p50_latency_s", "p95_latency_s",
                            "throughput_audio_s_per_s", "rtf", "mean_batch_formed", "mean_gpu_util_pct", "status"] if c in df]
        print(df[cols].to_string(index=False))
        if len(tf):
            print("\nTime to first audio, long paragraph (4 sentences), idle service:")
            print(tf.to_string(index=False))
    print(f"\nembedded engine on {engine.device}; {len(texts)} texts x {args.repeats} per cell, closed-loop clients, max wait {args.max_wait_ms} ms")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
