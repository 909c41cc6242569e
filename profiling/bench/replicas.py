"""Replicas on Ray Serve: 1 vs N replicas at C concurrent clients -> throughput, p95, utilisation, start-up, memory.

Each replica count is deployed on one local Ray cluster (all of this machine's CPUs and GPUs), measured through
the front's client (the path the app's /synthesize takes, less HTTP), then deleted. CPU: each replica gets its
share of the cores (cores / replicas, also its torch thread count). GPU: --gpus-per-replica pairs with --replicas
(1,0.5: one replica on the whole GPU, then two sharing it). --in-process adds the single-process app's path
(TTSService here, every core) as replicas=0.

CPU:  python -m profiling.bench.replicas --replicas 1,2 --clients 8,32 --out replicas_cpu.csv
GPU:  python -m profiling.bench.replicas --device cuda --replicas 1,2 --gpus-per-replica 1,0.5 --clients 8,32 --out replicas_gpu.csv
Needs ray[serve] (requirements-ray.txt) and this project's environment (phkit) on the machine.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time

import pandas as pd

from profiling.loadgen import WORKLOAD_FILE, load_workload, run_load, service_caller, summarize

SHOWN = ["replicas", "gpus_each", "cpus_each", "clients", "requests", "errors", "throughput_audio_s_per_s", "p50_latency_s",
         "p95_latency_s", "mean_batch_size", "mean_gpu_util_pct", "mean_cpu_pct", "peak_vram_used_mib", "deploy_s",
         "replica_startup_s", "rss_mib_each", "gpu_mib_each"]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",")]


def load_rows(service, monitor, label: dict, args, texts: list[str]) -> list[dict]:
    """Every client count against one service (TTSService or the replicas' client); one row each."""
    rows = []
    for clients in args.clients:
        run_load(service_caller(service), texts[: max(1, clients)], clients)  # warm the shapes this load forms
        repeats = max(args.repeats, math.ceil(2 * clients / len(texts)))  # every client busy to the end
        n_batches = len(service.batch_log)
        monitor.sample_once()
        t_start = time.time()
        records, wall_s = run_load(service_caller(service), texts, clients, repeats)
        t_end = time.time()
        monitor.sample_once()
        formed = [b.size for b in service.batch_log[n_batches:] if b.ok]
        usage = monitor.summary(t_start, t_end)
        rows.append({**label, "clients": clients, **summarize(records, wall_s),
                     "mean_batch_size": statistics.fmean(formed) if formed else math.nan,
                     "mean_gpu_util_pct": usage["mean_gpu_util_pct"], "mean_cpu_pct": usage["mean_cpu_pct"],
                     "peak_vram_used_mib": usage["peak_vram_used_mib"], "device": service.engine.device,
                     "precision": service.engine.precision})
        print(f"{label}, {clients} clients: {rows[-1]['throughput_audio_s_per_s']:.2f} audio-s/s, "
              f"p95 {rows[-1]['p95_latency_s']:.2f} s", file=sys.stderr, flush=True)
    return rows


def measure_in_process(args, texts: list[str]) -> list[dict]:
    """The single-process app's path (TTSService in this process, every core), as the reference row."""
    import torch

    from app.engines.embedded.engine import EmbeddedEngine
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings
    from profiling.monitor import Monitor

    t0 = time.monotonic()
    engine = EmbeddedEngine()
    engine.load(args.device, fp16=args.fp16)
    batch = BatchSettings(fp16=args.fp16, max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms)
    service = TTSService(engine, batch, ServeSettings(queue_size=4096)).start(warmup=True)
    startup_s = time.monotonic() - t0
    monitor = Monitor(extra=service.stats).start()
    try:
        label = {"replicas": 0, "gpus_each": math.nan, "cpus_each": torch.get_num_threads()}
        rows = load_rows(service, monitor, label, args, texts)
        sample = monitor.sample_once()
    finally:
        monitor.close()
        service.close()
    for row in rows:
        row.update(deploy_s=startup_s, replica_startup_s=startup_s, rss_mib_each=sample["rss_mib"], gpu_mib_each=sample["proc_vram_mib"])
    return rows


def measure(replicas: int, gpus_each: float, args, texts: list[str]) -> list[dict]:
    """Deploy `replicas`, run every client count on them, delete them; one row per client count."""
    from app.cluster.client import ReplicaClient
    from app.cluster.config import ClusterSettings
    from app.cluster.deploy import check_fits, deploy, shutdown
    from app.cluster.monitor import ClusterMonitor
    from app.settings import BatchSettings, EngineSettings, ServeSettings

    cpus_each = args.cpus_per_replica or max(1, (os.cpu_count() or 1) // replicas)
    cluster = ClusterSettings(replicas=replicas, gpus_per_replica=gpus_each, cpus_per_replica=cpus_each,
                              app_name=f"bench-{replicas}", max_queued_requests=4096, poll_s=1.0)
    batch = BatchSettings(fp16=args.fp16, max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms)
    serve = ServeSettings(queue_size=4096)
    check_fits(cluster, gpus_each, local=True)  # else Serve waits forever for resources that never come
    t0 = time.monotonic()
    handle, store = deploy(EngineSettings(device=args.device), batch, serve, cluster)
    deploy_s = time.monotonic() - t0  # every replica loaded and warmed up (they start in parallel)
    client = ReplicaClient(handle, store, cluster, serve).start()
    try:
        views = client.views()
        rows = load_rows(client, ClusterMonitor(client), {"replicas": replicas, "gpus_each": gpus_each, "cpus_each": cpus_each},
                         args, texts)
        client.refresh()
        last = [v.samples[-1] for v in client.views() if v.samples]
    finally:
        client.close()
        shutdown(cluster)
    for row in rows:
        row.update(deploy_s=deploy_s, replica_startup_s=statistics.fmean(v.telemetry["startup_s"] for v in views),
                   rss_mib_each=statistics.fmean(r["rss_mib"] for r in last) if last else math.nan,
                   gpu_mib_each=statistics.fmean(r["proc_vram_mib"] for r in last) if last else math.nan)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2", help="replica counts to compare")
    p.add_argument("--in-process", action="store_true", help="also measure TTSService in this process (no Ray) first")
    p.add_argument("--gpus-per-replica", type=_floats, help="one value per replica count (e.g. 1,0.5); default 0 each")
    p.add_argument("--cpus-per-replica", type=float, help="default: this machine's cores / replicas")
    p.add_argument("--clients", type=lambda v: [int(c) for c in v.split(",")], default=[8, 32])
    p.add_argument("--device", default="cpu", help="cpu | cuda (each replica numbers its own GPU as cuda:0)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=15.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    p.add_argument("--out", help="CSV of the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    counts = [int(r) for r in args.replicas.split(",")]
    gpus = args.gpus_per_replica or [0.0] * len(counts)
    if len(gpus) != len(counts):
        p.error(f"--gpus-per-replica has {len(gpus)} values for {len(counts)} replica counts")

    from app.cluster.config import ClusterSettings
    from app.cluster.deploy import connect

    texts = load_workload(args.texts)
    rows = measure_in_process(args, texts) if args.in_process else []  # before Ray starts: nothing else running
    connect(ClusterSettings())  # a local cluster with every CPU and GPU here
    rows += [row for n, g in zip(counts, gpus) for row in measure(n, g, args, texts)]
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.2f}".format):
        print(df[[c for c in SHOWN if c in df.columns]].to_string(index=False))
    print(f"\n{len(texts)} texts; {os.cpu_count()} CPUs here; device {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
