"""Cluster settings, checked once at the edge (no ray import here)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterSettings:
    """How many replicas, where, and how requests reach them; fixed for the life of the front."""

    replicas: int = 1  # Serve replicas, each with its own engine, batcher and monitor; fixed (no autoscaling)
    address: str | None = None  # None: start a local Ray cluster; "auto" or HOST:PORT: join a running one
    gpus_per_replica: float | None = None  # GPUs each replica reserves (0.5: two share a GPU); None: 1 if the cluster has GPUs, else 0
    cpus_per_replica: float = 1.0  # CPUs each replica reserves; its torch thread count is this, rounded down (at least 1)
    max_ongoing_requests: int = 64  # whole texts one replica works on at once (at least the max batch size: its batcher batches their sentences)
    max_queued_requests: int = 256  # texts the front holds while every replica is full; past it: "busy, try again"
    retries: int = 2  # times a text is re-sent when the replica answering it dies mid-request
    app_name: str = "tts"  # Serve application name; reached by deployment handle only (no HTTP route)
    health_check_period_s: float = 2.0  # Serve calls each replica's check_health this often
    poll_s: float = 2.0  # the front pulls every replica's telemetry (monitor, batches, health) this often
    full_warmup: bool = True  # warm every speaker before serving; False: one sentence proves the replica speaks

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas} must be at least 1")
        if self.gpus_per_replica is not None and not 0 <= self.gpus_per_replica <= 8:
            raise ValueError(f"gpus_per_replica={self.gpus_per_replica} must be between 0 and 8 (0.5 puts two replicas on a GPU)")
        if not 0 < self.cpus_per_replica <= 256:
            raise ValueError(f"cpus_per_replica={self.cpus_per_replica} must be above 0 and at most 256")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests={self.max_ongoing_requests} must be at least 1")
        if self.max_queued_requests < 1:
            raise ValueError(f"max_queued_requests={self.max_queued_requests} must be at least 1")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} must be 0 or more")
        if not self.app_name or "#" in self.app_name:
            raise ValueError(f"app_name={self.app_name!r} must be non-empty and without '#'")
        if not 0 < self.poll_s <= 60:
            raise ValueError(f"poll_s={self.poll_s} must be above 0 and at most 60")
