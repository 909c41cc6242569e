"""The settings comparison on the real engine (CPU), its CSV, and the load generator's statistics."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from app.service import TTSService
from app.settings import BatchSettings
from profiling.compare import COLUMNS, GridPoint, make_grid, run_grid
from profiling.loadgen import CallRecord, load_workload, percentile, summarize
from profiling.monitor import Monitor


def test_grid_is_the_cartesian_product_in_order():
    grid = make_grid([True, False], [1, 8], [False])
    assert [p.label for p in grid] == ["fp16=on batch=1 clear=off", "fp16=on batch=8 clear=off",
                                       "fp16=off batch=1 clear=off", "fp16=off batch=8 clear=off"]


def test_percentile_and_summary():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and math.isnan(percentile([], 50))
    recs = [CallRecord("a", 1.0, 2.0, batch_sizes=[2]), CallRecord("b", 3.0, 2.0, batch_sizes=[2]), CallRecord("c", 9.0, error="x")]
    s = summarize(recs, wall_s=4.0)
    assert s["requests"] == 3 and s["errors"] == 1
    assert s["throughput_audio_s_per_s"] == 1.0 and s["rtf"] == 1.0 and s["p50_latency_s"] == 2.0


def test_workload_ships_sixteen_texts():
    texts = load_workload()
    assert len(texts) == 16 and all(t and not t.startswith("#") for t in texts)


def test_two_setting_grid_on_the_real_engine(engine, tmp_path):
    svc = TTSService(engine, BatchSettings(max_batch_size=2, max_wait_ms=20)).start(warmup=False)
    monitor = Monitor(interval_s=0.1, extra=svc.stats).start()
    steps = []
    texts = ["春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。"]
    points = [GridPoint(False, 1, False), GridPoint(False, 4, True), GridPoint(True, 4, False)]
    df = run_grid(svc, monitor, points, texts, concurrency=4, repeats=1, progress=lambda i, n, label: steps.append(i))
    monitor.close()
    svc.close()
    assert list(df.columns) == COLUMNS and len(df) == 3
    ok = df[df["status"].str.startswith("ok")]
    assert list(ok["max_batch_size"]) == [1, 4]
    assert (ok["requests"] == 4).all() and (ok["errors"] == 0).all()
    assert (ok["p50_latency_s"] > 0).all() and (ok["p95_latency_s"] >= ok["p50_latency_s"]).all()
    assert (ok["throughput_audio_s_per_s"] > 0.5).all() and (ok["rtf"] < 2).all()
    assert ok.iloc[0]["mean_batch_size"] == 1 and ok.iloc[1]["mean_batch_size"] > 1
    assert (ok["peak_rss_mib"] > 100).all()
    assert "no CUDA" in ok.iloc[1]["status"]  # cache clearing on CPU is said to be only gc.collect
    assert df.iloc[2]["status"].startswith("skipped: FP16 needs CUDA")  # reported, not faked
    assert steps == [0, 1, 2, 3]
    assert svc.settings.max_batch_size == 2  # restored afterwards
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert list(back.columns) == COLUMNS and back["setting"].tolist() == df["setting"].tolist()
    pd.testing.assert_series_equal(back["throughput_audio_s_per_s"], df["throughput_audio_s_per_s"], check_dtype=False)


@pytest.mark.requires_cuda
def test_fp16_setting_runs_on_cuda(cuda_engine):
    svc = TTSService(cuda_engine, BatchSettings(max_batch_size=4)).start(warmup=False)
    df = run_grid(svc, None, [GridPoint(True, 4, True)], ["你好。", "谢谢。"], concurrency=2)
    svc.close()
    assert df.iloc[0]["status"] == "ok" and df.iloc[0]["peak_torch_allocated_mib"] > 0
