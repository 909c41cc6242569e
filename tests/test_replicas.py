"""The replica class as a plain object (no Ray cluster): async submit/stream, settings versions, telemetry, health;
the front's pieces that need no cluster: the engine view, the merged panel series, the caller's errors."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from app.cluster.engine_view import EngineInfo, ReplicaEngine
from app.cluster.monitor import total_frame
from app.cluster.replica import SettingsStore, TTSReplica
from app.errors import QueueFullError, SynthesisError, TTSInputError
from app.service import TTSService
from app.settings import BatchSettings, EngineSettings, ServeSettings
from tests.fixtures.fake_engine import FakeEngine

TEXTS = ["春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。", "今天下雨了。", "请关好窗户。"]


def plain_replica(engine, batch: BatchSettings = BatchSettings(max_batch_size=8, max_wait_ms=30), **serve) -> TTSReplica:
    """A replica around an already loaded engine, outside Ray (no settings store)."""
    return TTSReplica(EngineSettings(), batch, ServeSettings(**serve), full_warmup=False, engine=engine)


def run(coro):
    return asyncio.run(coro)


def test_async_submit_batches_concurrent_texts_and_each_gets_its_own_audio(engine):
    replica = plain_replica(engine)
    reference = TTSService(engine, BatchSettings(max_batch_size=1), ServeSettings()).start(warmup=False)
    try:
        alone = {t: reference.submit(t, "Aijia").audio for t in TEXTS}

        async def all_at_once():
            return await asyncio.gather(*(replica.submit(t, "Aijia") for t in TEXTS))

        results = run(all_at_once())
    finally:
        reference.close()
        replica.close()
    assert max(size for r in results for size in r.timings.batch_sizes) > 1  # they really batched
    for text, result in zip(TEXTS, results):
        ref = alone[text]
        assert abs(len(ref) - len(result.audio)) <= 256, text
        k = min(len(ref), len(result.audio))
        assert np.corrcoef(ref[:k], result.audio[:k])[0, 1] > 0.99, text


def test_async_stream_yields_sentences_in_order_matching_submit():
    replica = plain_replica(FakeEngine(delay_s=0.01))
    text = "第一句。第二句很长一点。第三句。"
    try:
        whole = run(replica.submit(text, "alice"))

        async def collect():
            return [p async for p in replica.stream(text, "alice")]

        pieces = run(collect())
    finally:
        replica.close()
    assert [p.index for p in pieces] == [0, 1, 2] and all(p.total == 3 for p in pieces)
    assert [p.text for p in pieces] == whole.sentences
    items = replica.service.plan(text, "alice")
    for piece, item in zip(pieces, items):
        np.testing.assert_array_equal(piece.audio, FakeEngine.expected(item))


def test_cancelled_async_caller_frees_its_queued_sentences():
    engine = FakeEngine(delay_s=0.2)
    replica = plain_replica(engine, BatchSettings(max_batch_size=1, max_wait_ms=0))

    async def give_up():
        task = asyncio.ensure_future(replica.submit("一。二。三。四。五。", "alice"))
        await asyncio.sleep(0.1)  # the first sentence is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)

    try:
        run(give_up())
    finally:
        replica.close()
    assert len(engine.batches) <= 2, engine.batches  # the rest were skipped, not computed
    assert replica.service.health()["items_dropped"] >= 3


def test_async_errors_are_the_services_own():
    replica = plain_replica(FakeEngine(fail_on="坏"), max_chars=20)
    try:
        with pytest.raises(TTSInputError, match="the limit is 20"):
            run(replica.submit("字" * 21, "alice"))
        with pytest.raises(TTSInputError, match="unknown speaker 'nobody'"):
            run(replica.submit("你好。", "nobody"))
        with pytest.raises(SynthesisError, match="fake failure"):
            run(replica.submit("坏了。", "alice"))
        assert run(replica.submit("好的。", "alice")).audio.size  # the worker keeps serving
    finally:
        replica.close()


def test_async_submit_times_out_with_a_clear_error():
    replica = plain_replica(FakeEngine(delay_s=1.0), BatchSettings(max_batch_size=1, max_wait_ms=0))
    try:
        with pytest.raises(SynthesisError, match="timed out after 0 s"):
            run(replica.submit("一。二。", "alice", timeout_s=0.3))
    finally:
        replica.close()


def test_settings_versions_apply_in_order_and_older_ones_are_ignored():
    replica = plain_replica(FakeEngine())
    try:
        state = run(replica.apply_settings(2, {"max_batch_size": 4, "max_wait_ms": 5.0}))
        assert state["version"] == 2 and state["settings"]["max_batch_size"] == 4
        stale = run(replica.apply_settings(1, {"max_batch_size": 16}))  # a late, older broadcast
        assert stale["version"] == 2 and replica.service.settings.max_batch_size == 4

        async def overlapping():  # two pushes racing: the newer one wins whatever the arrival order
            return await asyncio.gather(replica.apply_settings(4, {"max_batch_size": 2}),
                                        replica.apply_settings(3, {"max_batch_size": 3}))

        run(overlapping())
        assert replica.settings_version == 4 and replica.service.settings.max_batch_size == 2
        with pytest.raises(ValueError, match="max_batch_size=0"):
            run(replica.apply_settings(5, {"max_batch_size": 0}))
        assert replica.settings_version == 4  # a refused version is not recorded
    finally:
        replica.close()


def test_settings_store_versions():
    store = SettingsStore({"max_batch_size": 8})
    assert store.get() == (1, {"max_batch_size": 8})
    assert store.put({"max_batch_size": 2}) == 2 and store.get() == (2, {"max_batch_size": 2})


def test_telemetry_sends_only_what_is_new_since_the_cursors():
    replica = plain_replica(FakeEngine())
    try:
        first = run(replica.telemetry())
        me = first["replica"]
        assert me.startswith("local-") and first["health"]["status"] == "ok" and first["health"]["worker_alive"]
        assert isinstance(first["engine"], EngineInfo) and first["engine"].name == "fake"
        assert first["batches"], "the start-up sentence is in the first batch log"
        assert first["spans"] and first["requests"], "the start-up sentence's stages and request too"
        cursors = {me: (first["samples"][-1]["t"] if first["samples"] else 0.0, first["batches"][-1].t,
                        first["spans"][-1].t, first["requests"][-1].finished_at)}
        run(replica.submit("新的一句。", "alice"))
        second = run(replica.telemetry(cursors))
        assert [b.size for b in second["batches"]] == [1]
        assert [r.size for r in second["spans"]] == [1] and len(second["requests"]) == 1  # only what is new
        assert second["requests"][0].stages["other"] > 0  # the fake marks no stage: its call is all OTHER
        assert all(row["t"] > cursors[me][0] for row in second["samples"])
        assert "queue_depth" in (second["samples"][-1] if second["samples"] else {"queue_depth": 0})
    finally:
        replica.close()


def test_check_health_raises_once_the_worker_is_gone():
    replica = plain_replica(FakeEngine())
    run(replica.check_health())
    replica.service.close()
    with pytest.raises(RuntimeError, match="worker thread is not running"):
        run(replica.check_health())
    replica.close()


def test_engine_view_refuses_exactly_as_the_engine(engine):
    view = ReplicaEngine(EngineInfo.of(engine))
    assert (view.name, view.sample_rate, view.speakers, view.default_speaker) == (
        engine.name, engine.sample_rate, engine.speakers, engine.default_speaker)
    assert view.precision == engine.precision and view.fp16_supported == engine.fp16_supported
    assert view.emotions_for("Aijia") == engine.emotions_for("Aijia")
    for speaker, emotion in (("nobody", "neutral"), ("Aijia", "furious")):  # happy is rendered by rule on every voice
        with pytest.raises(TTSInputError) as theirs:
            engine.check(speaker, emotion)
        with pytest.raises(TTSInputError) as ours:
            view.check(speaker, emotion)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(RuntimeError, match="replicas"):
        view.synthesize([])


def test_engine_view_follows_per_speaker_emotions():
    fake = FakeEngine()
    fake.emotions_for = lambda speaker: ("neutral", "happy") if speaker == "alice" else ("neutral",)
    view = ReplicaEngine(EngineInfo.of(fake))
    view.check("alice", "happy")
    with pytest.raises(TTSInputError, match="speaker 'bob' has no emotion 'happy'"):
        view.check("bob", "happy")


def row(t: float, **values) -> dict:
    return {"t": t, **values}


def test_total_frame_adds_processes_and_counts_a_shared_gpu_once():
    same_gpu = [
        ("node/0", [row(10.1, rss_mib=100.0, vram_used_mib=3000.0, gpu_util_pct=50.0, queue_depth=2.0)]),
        ("node/0", [row(10.2, rss_mib=200.0, vram_used_mib=3000.0, gpu_util_pct=50.0, queue_depth=3.0)]),
    ]
    df = total_frame(same_gpu)
    assert len(df) == 1
    assert df.loc[0, "rss_mib"] == 300.0 and df.loc[0, "queue_depth"] == 5.0
    assert df.loc[0, "vram_used_mib"] == 3000.0 and df.loc[0, "gpu_util_pct"] == 50.0
    two_gpus = [("node/0", same_gpu[0][1]), ("node/1", [row(10.3, rss_mib=50.0, vram_used_mib=1000.0, gpu_util_pct=10.0)])]
    df = total_frame(two_gpus)
    assert df.loc[0, "vram_used_mib"] == 4000.0 and df.loc[0, "gpu_util_pct"] == 30.0 and df.loc[0, "rss_mib"] == 150.0


def test_total_frame_keeps_one_row_per_replica_per_bin_and_time_order():
    a = [row(10.0, rss_mib=1.0), row(10.25, rss_mib=2.0), row(10.6, rss_mib=4.0)]
    b = [row(10.1, rss_mib=10.0), row(10.7, rss_mib=20.0)]
    df = total_frame([("cpu", a), ("cpu", b)])
    assert df["rss_mib"].tolist() == [12.0, 24.0]  # bin [10, 10.5): a's latest 2 + b's 10
    assert df["t"].is_monotonic_increasing
    assert total_frame([("cpu", a)], since=10.3)["rss_mib"].tolist() == [4.0]
    empty = total_frame([])
    assert empty.empty and "vram_used_mib" in empty.columns
    assert math.isnan(total_frame([("cpu", a)])["vram_used_mib"].iloc[0])  # no GPU: NaN, not 0


def test_caller_errors_map_busy_input_and_a_dead_replica():
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install -r requirements-ray.txt)")
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from app.cluster.client import _caller_error
    from app.cluster.config import ClusterSettings

    cluster = ClusterSettings(replicas=2, max_queued_requests=5)
    busy, retry = _caller_error(BackPressureError(num_queued_requests=5, max_queued_requests=5), cluster)
    assert isinstance(busy, QueueFullError) and "busy" in str(busy) and not retry
    bad = TTSInputError("unknown speaker 'x'")
    assert _caller_error(RayTaskError("submit", "traceback", bad), cluster) == (bad, False)
    died, retry = _caller_error(ActorDiedError(), cluster)
    assert isinstance(died, SynthesisError) and "stopped" in str(died) and retry
    other, retry = _caller_error(RayTaskError("submit", "traceback", KeyError("x")), cluster)
    assert isinstance(other, SynthesisError) and "KeyError" in str(other) and not retry


def test_cli_flags_build_cluster_settings_and_need_ray_replicas():
    import launch

    args = launch.parse_args(["--ray-replicas", "2", "--gpus-per-replica", "0.5", "--queue-size", "64"])
    cluster = launch.cluster_from(args)
    assert (cluster.replicas, cluster.gpus_per_replica, cluster.cpus_per_replica, cluster.max_queued_requests) == (2, 0.5, 1.0, 64)
    assert launch.cluster_from(launch.parse_args([])) is None
    with pytest.raises(ValueError, match="need --ray-replicas"):
        launch.cluster_from(launch.parse_args(["--gpus-per-replica", "1"]))
    with pytest.raises(ValueError, match="replicas=0"):
        launch.cluster_from(launch.parse_args(["--ray-replicas", "0"]))


def test_single_process_path_never_imports_ray():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, launch\n"
            "args = launch.parse_args([])\n"
            "launch.settings_from(args); assert launch.cluster_from(args) is None\n"
            "import app.service, app.web.ui, profiling.compare, profiling.monitor\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.requires_cuda
def test_replica_on_cuda_checks_its_device_and_reports_its_memory(cuda_engine):
    replica = plain_replica(cuda_engine)
    try:
        run(replica.check_health())  # a tiny kernel and a read back
        state = run(replica.telemetry())
        assert state["engine"].device.startswith("cuda") and state["health"]["memory"]["torch_allocated_mib"] > 0
        assert run(replica.submit("你好。", "Aijia")).audio.size
    finally:
        replica.close()
