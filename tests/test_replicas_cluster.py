"""Two replicas of the embedded engine on a local Ray cluster (CPU), behind the launched app.

One cluster for the module (Ray starts once, ~10 s; each replica loads its engine and speaks one sentence before it
takes traffic). Loopback only: no dashboard, no usage report, no HTTP proxy.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.request
import wave
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from app.audio import int16_to_float
from app.errors import QueueFullError, SynthesisError
from app.service import TTSService
from app.settings import BatchSettings, EngineSettings, ServeSettings
from tests.test_app import free_port

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install -r requirements-ray.txt)")

TEXTS = [
    "春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。", "今天下雨了。", "请关好窗户。", "电脑很好用。", "火车开得很快。",
    "妈妈做晚饭。", "爸爸在看书。", "猫在睡觉。", "狗在院子里。", "天空很蓝。", "大海很宽。", "山上有雪。", "河水很清。",
]
LONG_TEXTS = [  # three sentences each: long enough that a replica is still busy when it is killed
    "我喜欢音乐。他会弹钢琴。她在画画。", "老师很和蔼。同学们好。欢迎光临。", "谢谢你的帮助。明天见。早上好。",
    "路上小心。祝你生日快乐。新年快乐。", "一路顺风。身体健康。工作顺利。", "今天天气很好。我们去公园。公园里有很多花。",
]
SPEAKER = "Aijia"
WAIT_S = 240.0  # bound on every wait here: generous for a shared 2-core machine, never infinite


@pytest.fixture(scope="module")
def cluster(engine):
    """2 replicas (1 CPU, 1 torch thread each) behind the real app on a free loopback port."""
    from ray import serve

    from app.cluster.config import ClusterSettings
    from app.cluster.deploy import RAY_ENV, shutdown, start_front
    from app.web.ui import build_ui, launch_ui

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)  # 2 replicas + room for a replacement
    settings = ClusterSettings(replicas=2, cpus_per_replica=1, full_warmup=False, max_ongoing_requests=8,
                               max_queued_requests=64, poll_s=1.0, health_check_period_s=1.0, app_name="tts-test")
    batch = BatchSettings(max_batch_size=8, max_wait_ms=30)
    serve_settings = ServeSettings(port=free_port(), max_chars=300, request_timeout_s=WAIT_S)
    try:
        client, monitor = start_front(EngineSettings(device="cpu"), batch, serve_settings, settings)
        demo = build_ui(client, monitor, streaming=False)
        url = launch_ui(demo, client, block=False)
        reference = TTSService(engine, BatchSettings(max_batch_size=1), ServeSettings()).start(warmup=False)
        yield SimpleNamespace(url=url, client=client, monitor=monitor, settings=settings, batch=batch, serve=serve_settings,
                              reference=reference)
        reference.close()
        demo.close()
        client.close()
        shutdown(settings)
    finally:
        serve.shutdown()
        ray.shutdown()


def assert_same_speech(ref: np.ndarray, got: np.ndarray, label: str) -> None:
    """The same sentence from another process and batch: same length within a frame hop, same waveform."""
    assert abs(len(ref) - len(got)) <= 256, label
    k = min(len(ref), len(got))
    assert np.corrcoef(ref[:k], got[:k])[0, 1] > 0.99, label


def items_run(client) -> dict[str, int]:
    client.refresh()
    return {v.replica: v.telemetry["health"]["items_run"] for v in client.views()}


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        return int16_to_float(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))


def test_16_concurrent_synthesize_calls_each_get_their_own_audio_from_both_replicas(cluster):
    from gradio_client import Client

    before = items_run(cluster.client)
    assert len(before) == 2
    client = Client(cluster.url, verbose=False)
    jobs = [client.submit(text, SPEAKER, "neutral", api_name="/synthesize") for text in TEXTS]
    paths = [job.result(timeout=WAIT_S) for job in jobs]
    for text, path in zip(TEXTS, paths):
        assert_same_speech(cluster.reference.submit(text, SPEAKER).audio, read_wav(path), text)
    after = items_run(cluster.client)
    served = {replica: after[replica] - before[replica] for replica in before}
    assert all(n > 0 for n in served.values()), f"a replica served nothing: {served}"
    assert sum(served.values()) >= len(TEXTS)


def test_health_and_panel_list_every_replica(cluster):
    from app.web.handlers import Handlers

    with urllib.request.urlopen(cluster.url.rstrip("/") + "/health", timeout=30) as r:
        body = json.loads(r.read())
    assert body["status"] == "ok" and body["replicas_wanted"] == 2
    assert len(body["replicas"]) == 2 and len({r["pid"] for r in body["replicas"]}) == 2
    assert all(r["health"]["model_loaded"] and r["health"]["worker_alive"] for r in body["replicas"])
    assert body["gpu_self_check"]["graphs"]["status"] == "skipped"  # the replicas' verdicts, merged (CPU: skipped)
    assert all(r["health"]["gpu_self_check"]["fp16"]["acoustic"]["status"] == "skipped" for r in body["replicas"])
    handlers = Handlers(cluster.client, cluster.monitor)
    assert handlers.status().count("**replica ") == 2
    memory, _, batches, stages, share, _ = handlers.panel()
    assert memory.data and batches.data  # the replicas' RSS and their batches reach the front's plots
    assert {t.name for t in stages.data} >= {"decoder", "vocoder"} and share.data  # and their stage spans and splits
    assert body["stages"]["window_requests"] > 0 and body["stages"]["window_share"]["decoder"] > 0
    frame = cluster.monitor.frame()
    assert len(frame) and frame["rss_mib"].iloc[-1] > 2 * 200  # two processes with a model each, added up


def test_bad_input_is_refused_at_the_front(cluster):
    before = items_run(cluster.client)
    with pytest.raises(Exception, match="the limit is 300"):
        cluster.client.submit("字" * 301, SPEAKER)
    with pytest.raises(Exception, match="unknown speaker 'nobody'"):
        cluster.client.submit("你好。", "nobody")
    with pytest.raises(Exception, match="nothing speakable"):  # needs the engine's frontend: a replica answers
        cluster.client.submit("!!!", SPEAKER)
    assert items_run(cluster.client) == before


def test_settings_change_reaches_both_replicas(cluster):
    from app.web.handlers import Handlers

    status, fp16, graphs, runtime = Handlers(cluster.client, cluster.monitor).apply_settings(False, 4, 10, False)
    assert "max batch 4" in status and (fp16, graphs, runtime) == (False, False, "torch")  # what the replicas have in force
    version = cluster.client.settings_version
    cluster.client.refresh()
    views = cluster.client.views()
    assert len(views) == 2
    for view in views:
        assert view.telemetry["settings_version"] == version
        assert view.telemetry["health"]["settings"]["max_batch_size"] == 4
        assert view.telemetry["health"]["settings"]["max_wait_ms"] == 10


def test_comparison_runs_on_the_whole_deployment(cluster):
    from profiling.compare import make_grid, run_grid

    before = cluster.client.settings
    df = run_grid(cluster.client, cluster.monitor, make_grid([False], [2], [False]), TEXTS[:4], concurrency=4)
    row = df.iloc[0]
    assert row["status"] == "ok" and row["requests"] == 4 and row["throughput_audio_s_per_s"] > 0
    assert 1 <= row["mean_batch_size"] <= 2  # the setting reached the replicas that ran the load
    assert row["peak_rss_mib"] > 2 * 200  # both replicas' memory, from their monitors
    assert cluster.client.settings == before  # the runner restores the deployment's settings


def test_killed_replica_is_replaced_and_every_accepted_request_gets_one_answer(cluster):
    from ray import serve

    client = cluster.client
    client.refresh()
    victim = client.views()[0]
    retried_before = client.retried

    def whole(text: str):
        try:
            return "audio", client.submit(text, SPEAKER).audio
        except (SynthesisError, QueueFullError) as exc:
            return "error", str(exc)

    def streamed(text: str):
        try:
            return "pieces", [(p.index, p.audio) for p in client.stream(text, SPEAKER)]
        except (SynthesisError, QueueFullError) as exc:
            return "error", str(exc)

    calls = [(whole, t) for t in LONG_TEXTS] + [(streamed, t) for t in LONG_TEXTS]
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(fn, text) for fn, text in calls]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill it once it is working on some of them
            client.refresh()
            busy = [v for v in client.views() if v.replica == victim.replica and v.telemetry["health"]["queue_depth"] > 0]
            if busy:
                break
            time.sleep(0.1)
        ray.kill(ray.get_actor(victim.telemetry["actor_name"], namespace="serve"), no_restart=True)
        outcomes = [f.result(timeout=WAIT_S) for f in futures]
    assert len(outcomes) == len(calls)
    for (fn, text), (kind, answer) in zip(calls, outcomes):
        if kind == "error":  # allowed, if clear
            assert "replica" in answer or "busy" in answer, answer
        elif kind == "audio":
            assert_same_speech(cluster.reference.submit(text, SPEAKER).audio, answer, text)
        else:  # every sentence exactly once, in order, each its own
            reference = list(cluster.reference.stream(text, SPEAKER))
            assert [index for index, _ in answer] == [p.index for p in reference], text
            for (_, audio), ref in zip(answer, reference):
                assert_same_speech(ref.audio, audio, ref.text)
    answered = sum(kind != "error" for kind, _ in outcomes)
    assert answered >= len(calls) - 2, outcomes  # re-sent, not lost
    assert client.retried > retried_before, "the killed replica had requests in flight: some must have been re-sent"

    deadline = time.monotonic() + WAIT_S
    while True:  # Serve replaces it; the front's view drops the dead one and finds the new one
        states = serve.status().applications[cluster.settings.app_name].deployments["TTSReplica"].replica_states
        client.refresh()
        replicas = {v.replica for v in client.views()}
        if states == {"RUNNING": 2} and len(replicas) == 2 and victim.replica not in replicas:
            break
        assert time.monotonic() < deadline, f"not back to 2 replicas: {states}, front sees {replicas}"
        time.sleep(0.5)
    for view in client.views():  # the replacement read the current settings version before serving
        assert view.telemetry["settings_version"] == client.settings_version
        assert view.telemetry["health"]["settings"]["max_batch_size"] == 4
    assert client.submit(TEXTS[0], SPEAKER).audio.size


def test_backpressure_gives_the_busy_error(cluster):
    from app.cluster.deploy import deploy

    # Redeploy with a front queue of 1 text (serve.run rolls the replicas over: about 20 s here); the other tests
    # need a roomy one, since Serve counts a burst as queued until each request is assigned to a replica.
    tight = dataclasses.replace(cluster.settings, max_queued_requests=1)
    deploy(EngineSettings(device="cpu"), cluster.batch, cluster.serve, tight)
    time.sleep(2 * cluster.settings.poll_s)  # the front's router hears of the new limit

    def call(text: str):
        try:
            return "audio", cluster.client.submit(text, SPEAKER).audio
        except QueueFullError as exc:
            return "busy", str(exc)

    texts = TEXTS + TEXTS
    with ThreadPoolExecutor(len(texts)) as pool:
        outcomes = list(pool.map(call, texts, timeout=WAIT_S))
    busy = [answer for kind, answer in outcomes if kind == "busy"]
    assert busy, "a burst past max_queued_requests must be refused"
    assert all("server busy" in message and "try again" in message for message in busy)
    for text, (kind, answer) in zip(texts, outcomes):
        if kind == "audio":  # what was accepted is answered, with its own audio
            assert_same_speech(cluster.reference.submit(text, SPEAKER).audio, answer, text)
