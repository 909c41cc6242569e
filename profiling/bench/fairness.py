"""Fair share benchmark: a lone client's latency behind one client's flood, and throughput with N equal clients.

python -m profiling.bench.fairness --device cpu --flood 64 --clients 8,32 --out fairness.csv

Flood: one caller sends `--flood` one-sentence texts at once; once they are queued, a second caller sends one text.
Its latency, and how many engine calls ran between its arrival and its answer, say whether it waited behind the flood.
Equal clients: closed-loop clients, each its own caller, on the shipped workload; throughput and latency percentiles.
Runs against whichever tree is on the import path: a tree whose service has no caller argument (first come, first
served) is measured the same way, so `PYTHONPATH=<old checkout> python <this file>` gives the before figures.
`--policies callers,one` alternates, in one process, callers with their own keys (round-robin) and every request as
one caller (first come, first served on the same code): an A/B under the same load.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from profiling.loadgen import WORKLOAD_FILE, CallRecord, load_workload, run_load, summarize

FLOOD_TEXTS = ["春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。",
               "今天下雨了。", "请关好窗户。", "天空很蓝。", "大海很宽。"]
LONE_TEXT = "我只想说一句话。"


def takes_callers(service) -> bool:
    """Whether this tree's service shares batches between callers (it takes a caller argument)."""
    return "caller" in inspect.signature(service.submit).parameters


def caller_kw(service, caller: str | None) -> dict:
    """{'caller': caller} where the service takes one and one is given, else {} (one caller: first come, first served)."""
    return {"caller": caller} if caller is not None and takes_callers(service) else {}


def flood_run(service, speaker: str, n: int, keyed: bool = True) -> dict:
    """One flood of n texts from one caller, then one text from another; the lone text's latency and engine calls.

    keyed False: send them all without caller keys (one caller: first come, first served)."""
    items_before = service.health()["items_run"]
    batches_before = len(service.batch_log)
    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        flooder = caller_kw(service, "flood" if keyed else None)
        flood = [pool.submit(service.submit, FLOOD_TEXTS[i % len(FLOOD_TEXTS)], speaker, **flooder) for i in range(n)]
        deadline = time.monotonic() + 60  # all accepted: queued or run (at most one batch in flight)
        while (service.queue_depth() + service.health()["items_run"] - items_before < n - service.settings.max_batch_size
               and time.monotonic() < deadline):
            time.sleep(0.002)
        arrival_batches, arrival_items = len(service.batch_log), service.health()["items_run"] - items_before
        t_lone = time.monotonic()
        lone = service.submit(LONE_TEXT, speaker, **caller_kw(service, "lone" if keyed else None))
        lone_s = time.monotonic() - t_lone
        answer_batches = len(service.batch_log)
        for f in flood:
            f.result()
    flood_s = time.monotonic() - t0
    sizes = [b.size for b in service.batch_log[batches_before:]]
    return {"scenario": f"flood {n} + lone 1", "lone_latency_s": lone_s, "lone_queue_wait_s": lone.timings.queue_wait_s,
            "engine_calls_while_lone_waited": answer_batches - arrival_batches, "flood_items_done_at_lone_arrival": arrival_items,
            "flood_wall_s": flood_s, "mean_batch_size": statistics.fmean(sizes) if sizes else float("nan")}


def equal_clients_run(service, speaker: str, texts: list[str], clients: int, repeats: int, keyed: bool = True) -> dict:
    """Closed-loop clients, each its own caller (its thread; keyed False: all one caller), on the workload."""
    def call(text: str) -> CallRecord:
        t0 = time.monotonic()
        try:
            res = service.submit(text, speaker, **caller_kw(service, threading.current_thread().name if keyed else None))
        except Exception as exc:  # counted, not raised
            return CallRecord(text, time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}")
        t = res.timings
        return CallRecord(text, time.monotonic() - t0, t.audio_s, t.first_audio_s, t.queue_wait_s, t.batch_sizes)

    cpu0 = _cpu_s()
    records, wall_s = run_load(call, texts, clients, repeats)
    cpu_s = _cpu_s() - cpu0
    summary = summarize(records, wall_s)
    return {"scenario": f"{clients} equal clients", **{k: summary[k] for k in (
        "requests", "errors", "p50_latency_s", "p95_latency_s", "throughput_audio_s_per_s", "mean_batch_size", "wall_s")},
        # CPU seconds this process spent per second of audio: what other jobs on a shared machine disturb least
        "cpu_s_per_audio_s": cpu_s / summary["audio_s"] if summary["audio_s"] else float("nan")}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=15.0)
    p.add_argument("--flood", type=int, default=64, help="texts the flooding client sends at once (0: skip)")
    p.add_argument("--floods", type=int, default=2, help="flood runs")
    p.add_argument("--clients", default="8,32", help="equal-client counts (empty: skip)")
    p.add_argument("--jobs-per-client", type=int, default=2, help="texts each equal client sends, about (workload repeated)")
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    p.add_argument("--speaker", help="default: the engine's best voice")
    p.add_argument("--label", default="", help="a label for this tree's rows (e.g. before/after)")
    p.add_argument("--policies", default="callers",
                   help="callers (own keys: round-robin), one (one caller: first come, first served), or both: callers,one")
    p.add_argument("--pairs", type=int, default=1, help="rounds of the policies, alternated in this one process")
    p.add_argument("--symbols", help="precomputed symbol ids (JSON) instead of phkit")
    p.add_argument("--out", help="CSV of the rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from profiling.bench.service import start_embedded_service

    engine, service = start_embedded_service(args.device, args.symbols, args.max_batch, args.max_wait_ms)
    speaker = args.speaker or engine.default_speaker
    texts = load_workload(args.texts)
    rows = []
    try:
        for pair in range(args.pairs):
            for policy in args.policies.split(","):
                keyed = policy.strip() == "callers" and takes_callers(service)
                batcher = "round-robin by caller" if keyed else "first come, first served"
                runs = [lambda k=keyed: flood_run(service, speaker, args.flood, k)] * (args.floods if args.flood else 0)
                for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
                    repeats = max(1, -(-clients * args.jobs_per_client // len(texts)))
                    runs.append(lambda c=clients, r=repeats, k=keyed: equal_clients_run(service, speaker, texts, c, r, k))
                for run in runs:
                    rows.append({"label": args.label, "pair": pair + 1, "batcher": batcher, **run()})
                    print(rows[-1], file=sys.stderr, flush=True)
    finally:
        service.close()
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.to_string(index=False))
    print(f"\nembedded engine on {engine.device}, {speaker}, max batch {args.max_batch}, max wait {args.max_wait_ms} ms")
    if args.out:
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
