"""The front's client: what the UI and the comparison runner call on TTSService, served by the Serve replicas.

Whole texts go to one replica each (its batcher batches their sentences, also with other texts there); live
settings go to every replica with one version number; a telemetry poll keeps the panel's view of each replica.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Iterator

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException

from app.batcher import BatchRecord
from app.cluster.config import ClusterSettings
from app.cluster.engine_view import EngineInfo, ReplicaEngine
from app.engines import self_check
from app.engines.base import NEUTRAL
from app.errors import QueueFullError, SynthesisError, TTSInputError
from app.service import Piece, Result, check_text, engine_fields, memory_figures
from app.settings import BatchSettings, ServeSettings
from app.spans import BatchSpans
from app.timings import Timings, stage_health

log = logging.getLogger(__name__)

RESULT_GRACE_S = 10.0  # past the request's own timeout (the replica enforces it), how long the front still waits
VIEW_SAMPLES = 2400  # per replica: 10 minutes of 4 Hz samples
VIEW_BATCHES = 2000  # per replica: as many batch records as a TTSService keeps
COUNTERS = ("queue_depth", "queue_capacity", "batches_run", "items_run", "items_failed", "items_dropped", "request_errors")
RECENT_BATCHES_S = 30.0  # the per-replica panel line's batch-size window
STALE_AFTER_POLLS = 3  # a replica silent for this many polls is gone (Serve is replacing it)


@dataclass
class ReplicaView:
    """What the front last heard from one replica."""

    replica: str  # Serve's replica id
    telemetry: dict  # the latest telemetry() answer, less its samples and batches
    samples: deque = field(default_factory=lambda: deque(maxlen=VIEW_SAMPLES))  # monitor rows, oldest first
    batches: deque = field(default_factory=lambda: deque(maxlen=VIEW_BATCHES))  # BatchRecords, oldest first
    spans: deque = field(default_factory=lambda: deque(maxlen=VIEW_BATCHES))  # BatchSpans (stages per call), oldest first
    requests: deque = field(default_factory=lambda: deque(maxlen=VIEW_BATCHES))  # finished requests' Timings, oldest first
    seen_at: float = 0.0  # time.time() of the latest answer

    @property
    def device_key(self) -> str:
        """Replicas with the same key share a GPU (or, on CPU, a node): device-wide figures are counted once."""
        t = self.telemetry
        return f"{t['node_id']}/{','.join(t['gpu_ids']) or 'cpu'}"

    def cursors(self) -> tuple[float, float, float, float]:
        """(last sample, batch, span record, request time) seen: the replica sends only what is newer."""
        return (self.samples[-1]["t"] if self.samples else 0.0, self.batches[-1].t if self.batches else 0.0,
                self.spans[-1].t if self.spans else 0.0, self.requests[-1].finished_at if self.requests else 0.0)


class ReplicaClient:
    """TTSService's surface (submit, stream, settings, health, stats, batch log, engine) over the replicas."""

    owns_engine = False  # synthesis runs in the replicas: no local torch figures (see profiling.compare)

    def __init__(self, handle, store, cluster: ClusterSettings, serve: ServeSettings) -> None:
        """handle: the deployment's DeploymentHandle; store: the SettingsStore actor handle."""
        self.cluster = cluster
        self.serve = serve
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._store = store
        self._views: dict[str, ReplicaView] = {}
        self._views_lock = threading.Lock()
        self._settings_lock = threading.Lock()  # one settings change at a time, so versions go out in order
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.errors = 0  # requests answered with a SynthesisError by the front (replica died past retries, timeouts)
        self.retried = 0  # texts re-sent because their replica died under them
        self.started_at = time.time()
        self._pull()
        first = self._freshest()
        self.engine = ReplicaEngine(first.telemetry["engine"])
        self._settings = BatchSettings(**first.telemetry["health"]["settings"])
        self.settings_version = first.telemetry["settings_version"]

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "ReplicaClient":
        """Start the telemetry poll (every cluster.poll_s)."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="replica-telemetry", daemon=True)
            self._poller.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=2 * self.cluster.poll_s + 5)

    def _poll(self) -> None:
        while not self._stop.wait(self.cluster.poll_s):
            try:
                self.refresh()
            except Exception as exc:  # a poll racing a dying replica or a restarting controller: the next one retries
                log.warning("replica telemetry poll failed: %s: %s", type(exc).__name__, exc)

    # --- requests ----------------------------------------------------------------------------------
    def check(self, text: str, speaker: str, emotion: str = NEUTRAL) -> None:
        """The checks that need no model, at the edge: bad input never takes a replica's time (TTSInputError)."""
        check_text(text, self.serve.max_chars)
        self.engine.check(speaker, emotion)

    def submit(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None, timeout_s: float | None = None,
               caller: Hashable = None, **options) -> Result:
        """A whole text on one replica (blocking); re-sent elsewhere if that replica dies before answering.

        caller: who asks; the replica's batcher shares its batches fairly between callers (TTSService.submit)."""
        self.check(text, speaker, emotion)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.serve.request_timeout_s)
        attempt = 0
        while True:
            remaining_s = max(0.0, deadline - time.monotonic())
            response = None
            try:
                response = self._handle.submit.remote(text, speaker, emotion, seed, remaining_s, caller=caller, **options)
                return response.result(timeout_s=remaining_s + RESULT_GRACE_S)
            except TimeoutError:
                if response is not None:
                    response.cancel()
                self.errors += 1
                raise SynthesisError(f"timed out after {remaining_s:.0f} s waiting for a replica") from None
            except Exception as exc:
                attempt = self._retry_or_raise(exc, attempt)

    def stream(self, text: str, speaker: str, emotion: str = NEUTRAL, seed: int | None = None, timeout_s: float | None = None,
               caller: Hashable = None, **options) -> Iterator[Piece]:
        """Each sentence as soon as its replica has it, in order. If the replica dies mid-text the text is re-sent
        and the sentences already given are skipped (same text and seeds: the same audio), so none comes twice."""
        self.check(text, speaker, emotion)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.serve.request_timeout_s)
        given, attempt = 0, 0
        while True:
            remaining_s = max(0.0, deadline - time.monotonic())
            pieces = None
            try:
                pieces = self._stream_handle.stream.remote(text, speaker, emotion, seed, remaining_s, caller=caller, **options)
                for piece in pieces:
                    if piece.index >= given:
                        given += 1
                        yield piece
                return
            except Exception as exc:
                attempt = self._retry_or_raise(exc, attempt)
            finally:
                if pieces is not None:
                    pieces.cancel()  # a consumer that stops early (closed browser) frees the replica's queue

    def _retry_or_raise(self, exc: Exception, attempt: int) -> int:
        """Re-send (returns the next attempt number) when the replica died; else raise the caller's error."""
        error, replica_died = _caller_error(exc, self.cluster)
        if replica_died and attempt < self.cluster.retries:
            self.retried += 1
            log.warning("replica died under a request (%s); re-sending it (attempt %d)", type(exc).__name__, attempt + 2)
            return attempt + 1
        if isinstance(error, SynthesisError):
            self.errors += 1
        raise error from None

    # --- settings ----------------------------------------------------------------------------------
    @property
    def settings(self) -> BatchSettings:
        """The live settings the replicas have in force (as the last change or poll reported them)."""
        return self._settings

    def apply_settings(self, timeout_s: float = 120.0, **changes) -> BatchSettings:
        """Validate at the edge, store one new version, push it to every replica; return it once all applied it.

        Replicas apply it between batches (no request lost); one that misses the push (starting, restarting) reads
        the store before serving and at its next health check.
        """
        wanted = dataclasses.replace(self._settings, **changes)  # ValueError names the bad value
        values = dataclasses.asdict(wanted)
        with self._settings_lock:
            version = ray.get(self._store.put.remote(values), timeout=timeout_s)
            states = self._handle.broadcast("apply_settings", version, values).results(timeout_s=timeout_s)
        newest = max(states, key=lambda state: state["version"])
        self._settings = BatchSettings(**newest["settings"])
        self.engine.update(newest["engine"])
        self.settings_version = newest["version"]
        return self._settings

    # --- telemetry ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pull every replica's telemetry now (the poller does this every cluster.poll_s)."""
        self._pull()
        if self._views:
            fresh = self._freshest()
            self.engine.update(fresh.telemetry["engine"])
            self._settings = BatchSettings(**fresh.telemetry["health"]["settings"])

    def _pull(self) -> None:
        with self._views_lock:
            cursors = {replica: view.cursors() for replica, view in self._views.items()}
        answers = self._handle.broadcast("telemetry", cursors).results(timeout_s=30.0, return_exceptions=True)
        now = time.time()
        with self._views_lock:
            for answer in answers:
                if isinstance(answer, BaseException):  # a replica dying mid-poll: it drops out below
                    continue
                samples, batches = answer.pop("samples"), answer.pop("batches")
                spans, requests = answer.pop("spans", ()), answer.pop("requests", ())
                view = self._views.setdefault(answer["replica"], ReplicaView(answer["replica"], answer))
                view.telemetry, view.seen_at = answer, now
                view.samples.extend(samples)
                view.batches.extend(batches)
                view.spans.extend(spans)
                view.requests.extend(requests)
            stale = [r for r, v in self._views.items() if now - v.seen_at > STALE_AFTER_POLLS * self.cluster.poll_s]
            for replica in stale:  # replaced replicas leave the panel
                del self._views[replica]

    def views(self) -> list[ReplicaView]:
        """The replicas heard from recently, in a stable order."""
        with self._views_lock:
            return sorted(self._views.values(), key=lambda v: (v.telemetry["node"], v.telemetry["pid"]))

    def _freshest(self) -> ReplicaView:
        views = self.views()
        if not views:
            raise SynthesisError(f"no replica of application {self.cluster.app_name!r} answered")
        return max(views, key=lambda v: (v.telemetry["settings_version"], v.seen_at))

    # --- introspection (TTSService's names) --------------------------------------------------------
    def queue_depth(self) -> int:
        return sum(v.telemetry["health"]["queue_depth"] for v in self.views())

    @property
    def batch_log(self) -> list[BatchRecord]:
        """Every replica's recent engine calls, merged in time order."""
        return sorted((b for v in self.views() for b in v.batches), key=lambda b: b.t)

    @property
    def span_log(self) -> list[BatchSpans]:
        """Every replica's recent engine calls' stages, merged in time order (the front's stage chart)."""
        return sorted((s for v in self.views() for s in v.spans), key=lambda s: s.t)

    @property
    def request_log(self) -> list[Timings]:
        """Every replica's recently finished requests with their per-stage split, merged in time order."""
        return sorted((t for v in self.views() for t in v.requests), key=lambda t: t.finished_at)

    def stats(self) -> dict[str, float]:
        views = self.views()
        return {"queue_depth": self.queue_depth(), "batches_run": sum(v.telemetry["health"]["batches_run"] for v in views),
                "replicas": len(views)}

    def health(self) -> dict:
        """TTSService.health()'s fields summed over replicas, plus one entry per replica."""
        views = self.views()
        healths = [v.telemetry["health"] for v in views]
        ok = len(views) == self.cluster.replicas and all(h["status"] == "ok" and h["worker_alive"] for h in healths)
        totals = {key: sum(h[key] for h in healths) for key in COUNTERS}
        totals["request_errors"] += self.errors
        devices = sorted({h["device"] for h in healths})
        return {
            "status": "ok" if ok else f"degraded: {len(views)} of {self.cluster.replicas} replicas answering",
            **engine_fields(self.engine),
            "model_loaded": bool(healths) and all(h["model_loaded"] for h in healths),
            "device": f"{len(views)} replicas on {', '.join(devices) or 'nothing'}",
            "settings": dataclasses.asdict(self._settings),
            "settings_version": self.settings_version,
            "cuda_graphs": bool(healths) and all(h["cuda_graphs"] for h in healths),  # in force on every replica
            "cuda_graphs_detail": "; ".join(sorted({h["cuda_graphs_detail"] for h in healths if h["cuda_graphs_detail"]})) or None,
            "runtime_detail": "; ".join(sorted({h["runtime_detail"] for h in healths if h.get("runtime_detail")})) or None,
            "gpu_self_check": self_check.merge(h.get("gpu_self_check") for h in healths),  # a failure on any replica shows
            "worker_alive": bool(healths) and all(h["worker_alive"] for h in healths),
            "note": "; ".join(self.engine.notes) or None,
            **totals,
            "requests_retried": self.retried,
            "uptime_s": round(time.time() - self.started_at, 1),
            "memory": memory_figures(),  # the front's own
            "stages": stage_health(self.request_log),  # over every replica's requests
            "replicas_wanted": self.cluster.replicas,
            "replicas": [_replica_entry(v) for v in views],
        }


def _replica_entry(view: ReplicaView) -> dict:
    t = view.telemetry
    return {
        "replica": view.replica, "node": t["node"], "pid": t["pid"], "gpu_ids": t["gpu_ids"], "device_key": view.device_key,
        "settings_version": t["settings_version"], "startup_s": round(t["startup_s"], 1),
        "seen_s_ago": round(time.time() - view.seen_at, 1), "health": t["health"], "summary": replica_line(view),
    }


def replica_line(view: ReplicaView) -> str:
    """One panel line: memory, utilisation, recent batch sizes, queue depth, settings version."""
    t, h = view.telemetry, view.telemetry["health"]
    last = view.samples[-1] if view.samples else {}
    recent = [b.size for b in view.batches if b.t > time.time() - RECENT_BATCHES_S and b.ok]
    memory = f"RSS {last.get('rss_mib', float('nan')):.0f} MiB"
    if last.get("proc_vram_mib", float("nan")) == last.get("proc_vram_mib"):  # not NaN: NVML sees this process
        memory += f", GPU {last['proc_vram_mib']:.0f} MiB"
    gpu_util = last.get("gpu_util_pct", float("nan"))
    util = f"GPU {gpu_util:.0f}%" if gpu_util == gpu_util else f"CPU {last.get('cpu_pct', float('nan')):.0f}%"
    batches = f"{len(recent)} batches in {RECENT_BATCHES_S:.0f} s, mean size {sum(recent) / len(recent):.1f}" if recent else "idle"
    return (f"**replica {view.replica}** ({t['node']}, pid {t['pid']}, {h['device']}): {memory} · {util} · {batches} · "
            f"queue {h['queue_depth']}/{h['queue_capacity']} · settings v{t['settings_version']}")


def _caller_error(exc: Exception, cluster: ClusterSettings) -> tuple[Exception, bool]:
    """(the error the caller gets, whether the replica died so the text may be re-sent)."""
    if isinstance(exc, BackPressureError):
        return QueueFullError(f"server busy: all {cluster.replicas} replicas are full and {cluster.max_queued_requests} "
                              "texts are already waiting; try again shortly"), False
    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, (TTSInputError, QueueFullError, SynthesisError)):
        return cause, False  # the replica's own answer, message intact
    if isinstance(cause, RayActorError):
        return SynthesisError(f"the replica serving this text stopped ({type(cause).__name__}) and "
                              f"{cluster.retries} re-sends failed too; try again"), True
    if isinstance(cause, RayServeException):
        return SynthesisError(f"no replica could take this text ({type(cause).__name__}: {cause})"), False
    return SynthesisError(f"replica failed: {type(cause).__name__}: {cause}"), False
