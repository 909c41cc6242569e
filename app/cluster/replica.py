"""One Serve replica: today's TTSService and its monitor, as a plain class (deploy.py makes it a deployment).

Every request method is async and awaits the batcher: Serve runs sync methods on a small thread pool, which
would cap how many texts wait in the batcher at once, and so the batches it can form.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from typing import AsyncIterator

from app.cluster.engine_view import EngineInfo
from app.engines.base import NEUTRAL, WARMUP_TEXT, EngineBase
from app.service import Piece, Result, TTSService
from app.settings import BatchSettings, EngineSettings, ServeSettings
from profiling.monitor import Monitor

log = logging.getLogger(__name__)

TELEMETRY_WINDOW_S = 120.0  # what a first poll gets: the side panel's window


class SettingsStore:
    """The one live-settings version for every replica (a named Ray actor): the front puts, replicas read.

    A replica reads it when it starts (so a replacement serves the current settings from its first request) and
    between health checks (so a replica that missed the front's broadcast catches up).
    """

    def __init__(self, settings: dict) -> None:
        self.version = 1
        self.settings = settings

    def put(self, settings: dict) -> int:
        """Store a new version; return its number."""
        self.version += 1
        self.settings = settings
        return self.version

    def get(self) -> tuple[int, dict]:
        return self.version, self.settings


class TTSReplica:
    """A resident engine, its batcher and its monitor; the front reaches it through a Serve deployment handle."""

    def __init__(
        self,
        engine_settings: EngineSettings,
        batch: BatchSettings,
        serve: ServeSettings,
        threads: int | None = None,
        full_warmup: bool = True,
        settings_store: tuple[str, str] | None = None,
        engine: EngineBase | None = None,
    ) -> None:
        """threads: torch's intra-op threads (its CPU share); settings_store: (actor name, namespace) of the
        SettingsStore, None outside Ray; engine: an already loaded engine (tests), else one is loaded here."""
        t0 = time.monotonic()
        self.service: TTSService | None = None
        self.monitor: Monitor | None = None
        self.identity = _identity()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if engine is None:
            from app.engines import create_engine

            engine = create_engine(engine_settings)
            engine.load(engine_settings.device, fp16=batch.fp16)
        self.service = TTSService(engine, batch, serve).start(warmup=False)
        self.settings_version = 0
        self._settings_lock = asyncio.Lock()
        self._store_name = settings_store
        self._store = None
        self._pull_settings_now()
        if full_warmup:
            self.service.warmup()
        else:  # one sentence proves this replica speaks before Serve sends it traffic
            self.service.submit(WARMUP_TEXT, engine.default_speaker)
        self.monitor = Monitor(extra=self.service.stats).start()
        self.startup_s = time.monotonic() - t0  # load, settings and warm-up: how long a replacement takes
        log.info("replica %s ready in %.1f s on %s", self.identity["replica"], self.startup_s, engine.device)

    # --- requests ----------------------------------------------------------------------------------
    async def submit(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None,
                     timeout_s: float | None = None, **options) -> Result:
        """A whole text: its sentences batch together here (and with other texts on this replica)."""
        return await self.service.submit_async(text, speaker, emotion, seed, timeout_s, **options)

    async def stream(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None,
                     timeout_s: float | None = None, **options) -> AsyncIterator[Piece]:
        """Each sentence as soon as it is ready, in order (called with handle.options(stream=True))."""
        async for piece in self.service.stream_async(text, speaker, emotion, seed, timeout_s, **options):
            yield piece

    # --- live settings -----------------------------------------------------------------------------
    async def apply_settings(self, version: int, settings: dict) -> dict:
        """Apply settings `version` between batches if it is newer than this replica's; return the state in force."""
        async with self._settings_lock:  # versions apply in order even when two broadcasts overlap
            if version > self.settings_version:
                await asyncio.wrap_future(self.service.update_settings(**settings))
                self.settings_version = version
        return self.settings_state()

    def settings_state(self) -> dict:
        """The settings version and values in force here, and the engine as they left it (precision, notes)."""
        return {"replica": self.identity["replica"], "version": self.settings_version,
                "settings": dataclasses.asdict(self.service.settings), "engine": EngineInfo.of(self.service.engine)}

    def _pull_settings_now(self) -> None:
        """At start-up: take the current version from the store before serving anything."""
        if self._store_name is None:
            return
        import ray

        version, settings = ray.get(self._settings_store().get.remote())
        if version > self.settings_version:
            self.service.apply_settings(**settings)
            self.settings_version = version

    def _settings_store(self):
        if self._store is None:
            import ray

            name, namespace = self._store_name
            self._store = ray.get_actor(name, namespace=namespace)
        return self._store

    # --- health and telemetry ----------------------------------------------------------------------
    async def check_health(self) -> None:
        """Serve's health check: raise when this replica cannot serve (Serve then replaces it).

        Also the between-broadcasts poll of the settings store.
        """
        if not self.service.health()["worker_alive"]:
            raise RuntimeError("the batch worker thread is not running")
        device = self.service.engine.device
        if device.startswith("cuda"):
            await asyncio.to_thread(_touch_cuda, device)
        if self._store_name is not None:
            version, settings = await self._settings_store().get.remote()
            if version > self.settings_version:
                await self.apply_settings(version, settings)

    async def telemetry(self, cursors: dict[str, tuple[float, float]] | None = None) -> dict:
        """Identity, health, settings version, engine snapshot, and the monitor samples, batches, stage spans and
        finished requests newer than this replica's cursors (the times of the last of each the front has, in that
        order; a first poll, or a cursor it lacks, gets the panel's window)."""
        first = time.time() - TELEMETRY_WINDOW_S
        cursor = tuple((cursors or {}).get(self.identity["replica"], ()))
        samples_since, batches_since, spans_since, requests_since = cursor + (first,) * (4 - len(cursor))
        return {
            **self.identity,
            "startup_s": self.startup_s,
            "health": self.service.health(),
            "settings_version": self.settings_version,
            "engine": EngineInfo.of(self.service.engine),
            "monitor_note": self.monitor.note,
            "device_name": self.monitor.device_name,
            "samples": self.monitor.frame(since=samples_since).to_dict("records"),
            "batches": [b for b in self.service.batch_log if b.t > batches_since],
            "spans": self.service.spans.records(since=spans_since),
            "requests": [t for t in self.service.request_log if t.finished_at > requests_since],
        }

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        if self.service is not None:
            self.service.close()

    def __del__(self) -> None:  # Serve calls it when it stops the replica
        self.close()


def _touch_cuda(device: str) -> None:
    """A tiny kernel and a read back: raises once the device or its context is lost (sticky CUDA errors)."""
    import torch

    torch.ones(1, device=device).add_(1).item()


def _identity() -> dict:
    """Who this replica is: Serve's replica id and actor name, node, pid and GPUs; a local id outside Serve."""
    pid = os.getpid()
    local = {"replica": f"local-{pid}", "actor_name": None, "node": "localhost", "node_id": "local", "pid": pid, "gpu_ids": []}
    if "ray" not in sys.modules:  # a plain object (tests, benchmarks): Serve always has ray imported
        return local
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        replica_id = serve.get_replica_context().replica_id
    except RayServeException:  # not inside a Serve replica
        return local
    return {"replica": replica_id.unique_id, "actor_name": replica_id.to_full_id_str(), "node": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "pid": pid, "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
