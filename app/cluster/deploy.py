"""Start or join a Ray cluster, deploy the replicas on Ray Serve, and hand the front its client (imports ray)."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from app.cluster.config import ClusterSettings
from app.cluster.replica import SettingsStore, TTSReplica
from app.errors import EngineUnavailableError
from app.settings import BatchSettings, EngineSettings, ServeSettings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the checkout; on a multi-node cluster every node has it at this path
NAMESPACE = "zh-tts"  # Ray namespace of the settings store actor
DEPLOYMENT = "TTSReplica"
# Set before a local cluster starts: no usage report (no network beyond the cluster), and replicas at normal
# priority (Ray runs workers at nice 15, which hands the CPU to anything else on the node: here, the workload).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}


def connect(cluster: ClusterSettings) -> bool:
    """ray.init once: a local cluster when cluster.address is None, else join it. Returns whether we started it."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise EngineUnavailableError("--ray-replicas needs Ray Serve: pip install -r requirements-ray.txt") from None

    if ray.is_initialized():
        return False
    if cluster.address is not None:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        return False
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return True


def gpus_per_replica(cluster: ClusterSettings) -> float:
    """The configured share, or 1 GPU each when the cluster has GPUs and none was asked for."""
    import ray

    if cluster.gpus_per_replica is not None:
        return cluster.gpus_per_replica
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_fits(cluster: ClusterSettings, gpus: float, local: bool) -> None:
    """Refuse (local cluster) or warn about (joined one: nodes may still join) replicas that cannot all be placed."""
    import ray

    have = ray.cluster_resources()
    for resource, each in (("CPU", cluster.cpus_per_replica), ("GPU", gpus)):
        need = each * cluster.replicas
        if need > have.get(resource, 0.0) + 1e-9:
            message = (f"{cluster.replicas} replicas x {each:g} {resource} need {need:g} {resource} but the cluster has "
                       f"{have.get(resource, 0.0):g}; lower --ray-replicas or the per-replica share")
            if local:
                raise ValueError(message)
            log.warning("%s (waiting for nodes to join)", message)


def deploy(engine_settings: EngineSettings, batch: BatchSettings, serve: ServeSettings, cluster: ClusterSettings,
           warmup: bool = True):
    """Deploy cluster.replicas replicas (fixed count) and return (deployment handle, settings store handle).

    Returns once every replica has loaded its engine and warmed up: Serve sends no traffic to a starting replica.
    """
    from ray import serve as ray_serve

    if cluster.max_ongoing_requests < batch.max_batch_size:
        raise ValueError(f"max_ongoing_requests={cluster.max_ongoing_requests} is below max_batch_size="
                         f"{batch.max_batch_size}: a replica could never fill its batches")
    gpus = gpus_per_replica(cluster)
    # Ray sets CUDA_VISIBLE_DEVICES only for replicas that reserve a GPU: one that reserves none must not use one.
    hide_gpus = {"CUDA_VISIBLE_DEVICES": ""} if gpus == 0 else {}
    store = settings_store(cluster, batch)
    replica = ray_serve.deployment(TTSReplica, name=DEPLOYMENT).options(
        num_replicas=cluster.replicas,
        ray_actor_options={
            "num_cpus": cluster.cpus_per_replica,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT), **RAY_ENV, **hide_gpus}},
        },
        max_ongoing_requests=cluster.max_ongoing_requests,
        max_queued_requests=cluster.max_queued_requests,
        health_check_period_s=cluster.health_check_period_s,
        health_check_timeout_s=max(30.0, 3 * cluster.health_check_period_s),
        max_constructor_retry_count=3,  # a replica that cannot load (no weights, no GPU) fails the deploy quickly
        graceful_shutdown_timeout_s=serve.request_timeout_s,
    )
    threads = max(1, int(cluster.cpus_per_replica))
    app = replica.bind(engine_settings, batch, serve, threads, cluster.full_warmup and warmup, (store_name(cluster), NAMESPACE))
    ray_serve.start(proxy_location="Disabled")  # the Gradio front reaches replicas by handle: no HTTP proxies
    t0 = time.monotonic()
    handle = ray_serve.run(app, name=cluster.app_name, route_prefix=None)
    log.info("%d replica(s) of %s ready in %.1f s (%g CPU, %g GPU each)", cluster.replicas, engine_settings.name,
             time.monotonic() - t0, cluster.cpus_per_replica, gpus)
    return handle, store


def store_name(cluster: ClusterSettings) -> str:
    return f"{cluster.app_name}-settings"


def settings_store(cluster: ClusterSettings, batch: BatchSettings):
    """The settings store actor, created or reset to `batch` (a new front starts from its own settings)."""
    import ray

    actor = ray.remote(num_cpus=0)(SettingsStore).options(
        name=store_name(cluster), namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote(dataclasses.asdict(batch))
    ray.get(actor.put.remote(dataclasses.asdict(batch)))
    return actor


def start_front(engine_settings: EngineSettings, batch: BatchSettings, serve: ServeSettings, cluster: ClusterSettings,
                warmup: bool = True):
    """Connect, deploy, and return (client, monitor) for the UI: the same surface as (TTSService, Monitor)."""
    from app.cluster.client import ReplicaClient
    from app.cluster.monitor import ClusterMonitor

    started = connect(cluster)
    check_fits(cluster, gpus_per_replica(cluster), local=started)
    handle, store = deploy(engine_settings, batch, serve, cluster, warmup)
    client = ReplicaClient(handle, store, cluster, serve).start()
    return client, ClusterMonitor(client)


def shutdown(cluster: ClusterSettings) -> None:
    """Delete the application and its settings store (the replicas free their GPUs)."""
    import ray
    from ray import serve as ray_serve

    ray_serve.delete(cluster.app_name)
    try:
        ray.kill(ray.get_actor(store_name(cluster), namespace=NAMESPACE))
    except ValueError:  # already gone
        pass
