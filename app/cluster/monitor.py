"""The front's monitor: every replica's samples merged into one total series, with profiling.Monitor's surface.

Each replica samples its own process and GPU (profiling.Monitor, 4 Hz); the front's client pulls those rows.
Per-process figures (RSS, torch memory, this process's GPU memory, CPU, queue depth) add up over replicas;
device-wide figures (device memory used, utilisation, power) are counted once per GPU, since replicas sharing a
GPU each see the same device. No ray import here.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Protocol, Sequence

import pandas as pd

from profiling.monitor import NVML_COLUMNS, SAMPLE_COLUMNS, window_summary

BIN_S = 0.5  # rows from different replicas within one bin are one moment of the total
DEVICE_SUMMED = ("vram_used_mib", "vram_total_mib", "power_w")  # over GPUs: add
DEVICE_AVERAGED = ("gpu_util_pct", "mem_util_pct", "temp_c")  # over GPUs: mean
PER_PROCESS = tuple(c for c in SAMPLE_COLUMNS[1:] if c not in DEVICE_SUMMED + DEVICE_AVERAGED)  # over replicas: add
LATEST_ONLY = ("last_batch_size",)  # extra-probe columns that are a state, not an amount: max over replicas


class SampleSource(Protocol):
    """Where the rows come from (the ReplicaClient)."""

    def views(self) -> Sequence: ...

    def refresh(self) -> None: ...


def total_frame(replicas: Iterable[tuple[str, Sequence[dict]]], since: float | None = None) -> pd.DataFrame:
    """(device key, monitor rows) per replica -> one row per BIN_S with the cluster's totals, oldest first.

    Within a bin each replica counts once (its latest row); a replica without a row in a bin adds nothing there.
    """
    frames = []
    for index, (device, rows) in enumerate(replicas):
        df = pd.DataFrame.from_records([r for r in rows if since is None or r["t"] > since])
        if len(df):
            frames.append(df.assign(replica=index, device=device))
    if not frames:
        return pd.DataFrame(columns=list(SAMPLE_COLUMNS), dtype="float64")
    rows = pd.concat(frames, ignore_index=True)
    rows["bin"] = (rows["t"] // BIN_S).astype("int64")
    latest = rows.sort_values("t").groupby(["bin", "replica"], as_index=False).last()
    extras = [c for c in latest.columns if c not in SAMPLE_COLUMNS and c not in ("replica", "device", "bin")]
    by_bin = latest.groupby("bin")
    out = pd.DataFrame({"t": by_bin["t"].max()})
    for column in PER_PROCESS + tuple(extras):
        if column in latest.columns:
            out[column] = by_bin[column].max() if column in LATEST_ONLY else by_bin[column].sum(min_count=1)
    per_gpu = latest.groupby(["bin", "device"])[[c for c in NVML_COLUMNS if c in latest.columns and c not in PER_PROCESS]].mean()
    for column in per_gpu.columns:
        over_gpus = per_gpu[column].groupby(level="bin")
        out[column] = over_gpus.sum(min_count=1) if column in DEVICE_SUMMED else over_gpus.mean()
    columns = list(SAMPLE_COLUMNS) + [c for c in out.columns if c not in SAMPLE_COLUMNS]
    return out.reset_index(drop=True).reindex(columns=columns).astype("float64")


class ClusterMonitor:
    """frame / summary / sample_once / note over the replicas' samples, for the panel and the comparison runner."""

    def __init__(self, source: SampleSource) -> None:
        self._source = source

    def start(self) -> "ClusterMonitor":
        return self  # the client's telemetry poll feeds it

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def note(self) -> str | None:
        """The replicas' own monitor notes (no NVML, ...), once each."""
        notes = sorted({v.telemetry["monitor_note"] for v in self._source.views() if v.telemetry["monitor_note"]})
        return "; ".join(f"replicas: {n}" for n in notes) or None

    @property
    def device_name(self) -> str:
        names = sorted({v.telemetry["device_name"] for v in self._source.views()})
        return ", ".join(names) or "no replica yet"

    @property
    def gpu_available(self) -> bool:
        return any(v.telemetry["gpu_ids"] for v in self._source.views())

    def frame(self, since: float | None = None) -> pd.DataFrame:
        """The cluster's totals after time `since` (all when None), oldest first."""
        return total_frame(((v.device_key, v.samples) for v in self._source.views()), since)

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        """Peaks and means of the totals over t0 <= t <= t1 (the comparison runner's memory and utilisation columns)."""
        df = self.frame(since=t0 - BIN_S)
        return window_summary(df[(df["t"] >= t0) & (df["t"] <= t1)])

    def sample_once(self) -> dict[str, float]:
        """Pull the replicas' latest rows now and return the newest total."""
        self._source.refresh()
        df = self.frame(since=time.time() - 5 * BIN_S)
        return df.iloc[-1].to_dict() if len(df) else {c: math.nan for c in SAMPLE_COLUMNS}
