"""What a recorded torch.profiler trace says, read from its Chrome trace events: pure functions, no torch.

- `ops_table`: the top host operators (self time, calls, share of the stage) and, on CUDA, the top GPU kernels,
  grouped by the stage ranges the batch worker opened (app.spans: "stage:decoder", ...).
- `launch_figures`: whether decoding is launch-bound: host op calls, kernel launches (the host API calls:
  cudaLaunchKernel, cudaGraphLaunch, ...) and kernels run per decoded frame and per decoder step, and on CUDA the
  share of the traced batches' wall time the GPU had a kernel running. Every count is taken from the trace.
- `bounded_events`: the events written to the downloadable file, at most a fixed number.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from app.spans import TRACE_BATCH_RANGE, TRACE_RANGE_PREFIX, BatchSpans

HOST_CATEGORIES = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")  # events on host threads
API_CATEGORIES = ("cuda_runtime", "cuda_driver")  # host calls into CUDA (a kernel's correlation id points at one)
RANGE_CATEGORY = "user_annotation"  # record_function ranges
# Host API calls that put work on the GPU: one per kernel, one per whole graph replay.
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                "cuGraphLaunch", "cudaLaunchCooperativeKernel")
GRAPH_LAUNCH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")
OPS_COLUMNS = ["stage", "kind", "name", "calls", "self_ms", "share_of_stage"]
DECODER = "decoder"


@dataclass
class _Event:
    """One complete ("X") event with what the tree walk adds."""

    raw: dict
    cat: str
    name: str
    ts: float  # microseconds
    dur: float  # microseconds
    stage: str | None = None  # the stage range it lies in (None: outside every traced batch's stages)
    in_batch: bool = False  # inside a traced batch's range
    child_us: float = 0.0  # time in its direct child ops and ranges

    @property
    def end(self) -> float:
        return self.ts + self.dur


def complete_events(trace: dict) -> list[_Event]:
    """The trace's complete events (ph "X") with a duration."""
    return [_Event(e, e.get("cat", ""), str(e.get("name", "")), float(e["ts"]), float(e.get("dur", 0.0)))
            for e in trace.get("traceEvents", ()) if e.get("ph") == "X" and "ts" in e]


def attribute(events: Sequence[_Event]) -> None:
    """Nest each host thread's events by time; give every event its stage, batch flag and child time."""
    threads: dict[tuple, list[_Event]] = defaultdict(list)
    for event in events:
        if event.cat in HOST_CATEGORIES:
            threads[(event.raw.get("pid"), event.raw.get("tid"))].append(event)
    for thread in threads.values():
        thread.sort(key=lambda e: (e.ts, -e.dur))
        stack: list[_Event] = []
        for event in thread:
            while stack and stack[-1].end <= event.ts:
                stack.pop()
            parent = stack[-1] if stack else None
            if parent is not None:
                event.stage, event.in_batch = parent.stage, parent.in_batch
                if event.cat in ("cpu_op", RANGE_CATEGORY):
                    parent.child_us += event.dur
            if event.cat == RANGE_CATEGORY and event.name == TRACE_BATCH_RANGE:
                event.in_batch = True
            elif event.cat == RANGE_CATEGORY and event.name.startswith(TRACE_RANGE_PREFIX):
                event.stage = event.name[len(TRACE_RANGE_PREFIX):]
            stack.append(event)
    launches = {e.raw.get("args", {}).get("correlation"): e for e in events if e.cat in API_CATEGORIES}
    ranges = sorted((e.ts, e.end, e.stage) for e in events if e.cat == RANGE_CATEGORY and e.stage is not None
                    and e.name.startswith(TRACE_RANGE_PREFIX))
    starts = [r[0] for r in ranges]
    for event in events:
        if event.cat != "kernel":
            continue
        launch = launches.get(event.raw.get("args", {}).get("correlation"))
        if launch is not None:  # a kernel belongs where its launch was made on the host
            event.stage, event.in_batch = launch.stage, launch.in_batch
            continue
        # No launch on record (a profiler that does not link a graph's kernels to its replay): the stage whose host
        # range it ran in. Every stage ends in a host sync or before one, so its kernels run inside the batch.
        k = bisect.bisect_right(starts, event.ts) - 1
        if k >= 0 and event.ts < ranges[k][1]:
            event.stage, event.in_batch = ranges[k][2], True


def stage_ranges(events: Sequence[_Event]) -> dict[str, float]:
    """Microseconds of host wall time per stage, from the stage ranges themselves."""
    out: dict[str, float] = defaultdict(float)
    for event in events:
        if event.cat == RANGE_CATEGORY and event.name.startswith(TRACE_RANGE_PREFIX):
            out[event.name[len(TRACE_RANGE_PREFIX):]] += event.dur
    return dict(out)


def ops_table(events: Sequence[_Event], top: int = 8) -> pd.DataFrame:
    """Per stage (in time order of first appearance), its top host ops by self time, then its top GPU kernels."""
    wall_us = stage_ranges(events)
    rows: dict[tuple[str, str, str], list[float]] = {}
    for event in events:
        if event.stage is None or event.cat not in ("cpu_op", "kernel"):
            continue
        kind = "host op" if event.cat == "cpu_op" else "GPU kernel"
        self_us = event.dur - event.child_us if event.cat == "cpu_op" else event.dur
        row = rows.setdefault((event.stage, kind, event.name), [0, 0.0])
        row[0] += 1
        row[1] += max(0.0, self_us)
    table = pd.DataFrame([(s, k, n, calls, us / 1000.0) for (s, k, n), (calls, us) in rows.items()],
                         columns=OPS_COLUMNS[:-1])
    if table.empty:
        return pd.DataFrame(columns=OPS_COLUMNS)
    table["share_of_stage"] = [ms * 1000.0 / wall_us[s] if wall_us.get(s) else float("nan")
                               for s, ms in zip(table["stage"], table["self_ms"])]
    order = {stage: i for i, stage in enumerate(wall_us)}
    table = table.sort_values(["self_ms"], ascending=False).groupby(["stage", "kind"], sort=False).head(top)
    table["_order"] = table["stage"].map(order).fillna(len(order))
    table["_kind"] = (table["kind"] == "GPU kernel").astype(int)
    return table.sort_values(["_order", "_kind", "self_ms"], ascending=[True, True, False]).drop(
        columns=["_order", "_kind"]).reset_index(drop=True)


def _union_us(intervals: Iterable[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def gpu_busy_share(events: Sequence[_Event]) -> float:
    """Share of the traced batches' wall time in which the GPU ran at least one kernel (NaN: no kernels)."""
    batches = [(e.ts, e.end) for e in events if e.cat == RANGE_CATEGORY and e.name == TRACE_BATCH_RANGE]
    kernels = [(e.ts, e.end) for e in events if e.cat == "kernel"]
    if not kernels or not batches:
        return float("nan")
    clipped = [(max(lo, b_lo), min(hi, b_hi)) for lo, hi in kernels for b_lo, b_hi in batches if lo < b_hi and hi > b_lo]
    return _union_us(clipped) / _union_us(batches)


def launch_figures(events: Sequence[_Event], records: Sequence[BatchSpans]) -> dict[str, float]:
    """Launch-bound figures of the decoder stage (per decoded frame and per decoder step) and of whole batches."""
    frames = sum(r.frames for r in records)
    steps = sum(r.steps for r in records)
    decoder = [e for e in events if e.stage == DECODER]
    batch = [e for e in events if e.in_batch]
    host_ops = sum(e.cat == "cpu_op" for e in decoder)
    launches = sum(e.cat in API_CATEGORIES and e.name in LAUNCH_CALLS for e in decoder)
    graph_launches = sum(e.cat in API_CATEGORIES and e.name in GRAPH_LAUNCH_CALLS for e in decoder)
    kernels = sum(e.cat == "kernel" for e in decoder)
    per = lambda n, d: n / d if d else float("nan")  # noqa: E731
    cuda = any(e.cat == "kernel" for e in events)
    nan = float("nan")
    return {
        "batches_traced": len(records),
        "items_traced": sum(r.size for r in records),
        "decoder_frames": frames,
        "decoder_steps": steps,
        "host_ops_per_frame": per(host_ops, frames),
        "host_ops_per_step": per(host_ops, steps),
        "launches_per_frame": per(launches, frames) if cuda else nan,
        "launches_per_step": per(launches, steps) if cuda else nan,
        "graph_launches": graph_launches if cuda else nan,
        "kernels_per_frame": per(kernels, frames) if cuda else nan,
        "kernels_per_step": per(kernels, steps) if cuda else nan,
        "host_ops_per_batch": per(sum(e.cat == "cpu_op" for e in batch), len(records)),
        "kernels_per_batch": per(sum(e.cat == "kernel" for e in batch), len(records)) if cuda else nan,
        "gpu_busy_share": gpu_busy_share(events),
    }


def bounded_events(trace: dict, max_events: int) -> tuple[dict, int]:
    """The trace with at most about max_events events: metadata and the batch and stage ranges always kept, then the
    other events in time order until the bound (so the first batches stay whole); returns it and how many were dropped."""
    events = trace.get("traceEvents", [])
    if len(events) <= max_events:
        return trace, 0
    always = lambda e: e.get("ph") == "M" or e.get("cat") in (RANGE_CATEGORY, "gpu_user_annotation")  # noqa: E731
    kept = [e for e in events if always(e)]
    rest = sorted((e for e in events if not always(e)), key=lambda e: float(e.get("ts", 0.0)))
    room = max(0, max_events - len(kept))
    kept += rest[:room]
    dropped = len(rest) - room
    if dropped > 0:
        first = rest[room]
        kept.append({"ph": "i", "s": "g", "name": f"trace truncated here: {dropped} later events dropped to bound the file",
                     "ts": first.get("ts", 0.0), "pid": first.get("pid", 0), "tid": first.get("tid", 0)})
    return {**trace, "traceEvents": kept}, max(0, dropped)
