"""Capacity under a latency target: the most concurrent clients a setting serves with p95 latency within the target.

For the settings in force, closed-loop clients step up through CAPACITY_LEVELS; each level sends at least twice as
many requests as it has clients (so every client waits behind the others at least once, not only the first burst),
and the search stops at the first level whose p95 misses the target (or that has errors), or when its time budget
is spent. The row says the highest level that met the target and the throughput there.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from profiling.loadgen import run_load, service_caller, summarize

CAPACITY_LEVELS = (1, 2, 4, 8, 16, 32, 64)  # concurrent clients tried, in order
CAPACITY_BUDGET_S = 900.0  # seconds after which one setting's search starts no further level (the first always runs)
SLO_P95_CUDA_S = 1.0  # default target on a GPU: the seed article's interactive bar
SLO_P95_CPU_S = 30.0  # default target on a CPU, where a 16-text workload takes seconds per text
CAPACITY_COLUMNS = ["slo_p95_s", "capacity_concurrency", "capacity_throughput_audio_s_per_s", "capacity_p95_s",
                    "capacity_missed_at", "capacity_missed_p95_s", "capacity_levels_run", "capacity_note"]


def default_slo_p95_s(device: str) -> float:
    """The default p95 target: 1 s on CUDA, 30 s on a CPU."""
    return SLO_P95_CUDA_S if device.startswith("cuda") else SLO_P95_CPU_S


def check_slo(slo_p95_s: float) -> float:
    """A p95 target checked at the edge (ValueError names the value)."""
    if not isinstance(slo_p95_s, (int, float)) or not slo_p95_s > 0 or slo_p95_s != slo_p95_s:
        raise ValueError(f"slo_p95_s={slo_p95_s!r}: the p95 latency target must be a positive number of seconds")
    return float(slo_p95_s)


def level_texts(texts: Sequence[str], concurrency: int) -> list[str]:
    """What one level sends: the texts in turn, at least twice as many requests as clients."""
    n = max(len(texts), 2 * concurrency)
    return [texts[i % len(texts)] for i in range(n)]


def capacity_search(service, texts: Sequence[str], slo_p95_s: float, levels: Sequence[int] = CAPACITY_LEVELS,
                    budget_s: float = CAPACITY_BUDGET_S, report: Callable[[str], None] | None = None) -> dict:
    """Step the concurrency up under the settings in force until p95 misses slo_p95_s; one flat dict (CAPACITY_COLUMNS)."""
    slo_p95_s = check_slo(slo_p95_s)
    call = service_caller(service)
    row = {"slo_p95_s": slo_p95_s, "capacity_concurrency": 0, "capacity_throughput_audio_s_per_s": float("nan"),
           "capacity_p95_s": float("nan"), "capacity_missed_at": float("nan"), "capacity_missed_p95_s": float("nan")}
    run, note = [], f"met at every level up to {levels[-1]} clients"
    t0 = time.monotonic()
    for concurrency in levels:
        if run and time.monotonic() - t0 > budget_s:  # the first level always runs
            note = f"time budget ({budget_s:.0f} s) spent before {concurrency} clients"
            break
        if report is not None:
            report(f"{concurrency} clients")
        records, wall_s = run_load(call, level_texts(texts, concurrency), concurrency)
        stats = summarize(records, wall_s)
        run.append(concurrency)
        if stats["errors"] or not stats["p95_latency_s"] <= slo_p95_s:
            row.update(capacity_missed_at=concurrency, capacity_missed_p95_s=stats["p95_latency_s"])
            note = (f"{stats['errors']} error(s) at {concurrency} clients" if stats["errors"] else
                    f"p95 {stats['p95_latency_s']:.2f} s > {slo_p95_s:g} s at {concurrency} clients")
            break
        row.update(capacity_concurrency=concurrency, capacity_p95_s=stats["p95_latency_s"],
                   capacity_throughput_audio_s_per_s=stats["throughput_audio_s_per_s"])
    row.update(capacity_levels_run=",".join(map(str, run)), capacity_note=note)
    return row
