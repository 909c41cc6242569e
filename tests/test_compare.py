"""The settings comparison on the real engine (CPU), its CSV, and the load generator's statistics."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from app.service import TTSService
from app.settings import BatchSettings
from app.spans import REQUEST_STAGES
from profiling.compare import COLUMNS, GridPoint, make_grid, run_grid
from profiling.loadgen import CallRecord, load_workload, percentile, summarize
from profiling.monitor import Monitor
from profiling.sentences import sentence_list


def test_grid_is_the_cartesian_product_in_order():
    grid = make_grid([True, False], [1, 8], [False])
    assert [p.label for p in grid] == [f"fp16={f} batch={b} clear=off graphs=off runtime=torch"
                                       for f in ("on", "off") for b in (1, 8)]
    graphs = make_grid([False], [4], [False], [True, False], ["torch", "onnxruntime"])
    assert [p.label for p in graphs] == [f"fp16=off batch=4 clear=off graphs={g} runtime={r}"
                                         for g in ("on", "off") for r in ("torch", "onnxruntime")]
    assert graphs[1].settings()["runtime"] == "onnxruntime"


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
    points = [GridPoint(False, 1, False), GridPoint(False, 4, True), GridPoint(True, 4, False), GridPoint(False, 4, False, True)]
    df = run_grid(svc, monitor, points, texts, concurrency=4, repeats=1, progress=lambda i, n, label: steps.append(i),
                  quality_texts=3)
    monitor.close()
    svc.close()
    assert list(df.columns) == COLUMNS and len(df) == 4
    ok = df[df["status"].str.startswith("ok")]
    assert list(ok["max_batch_size"]) == [1, 4]
    assert (ok["requests"] == 4).all() and (ok["errors"] == 0).all()
    assert (ok["p50_latency_s"] > 0).all() and (ok["p95_latency_s"] >= ok["p50_latency_s"]).all()
    assert (ok["throughput_audio_s_per_s"] > 0.5).all() and (ok["rtf"] < 2).all()
    assert ok.iloc[0]["mean_batch_size"] == 1 and ok.iloc[1]["mean_batch_size"] > 1
    assert (ok["peak_rss_mib"] > 100).all()
    assert "no CUDA" in ok.iloc[1]["status"]  # cache clearing on CPU is said to be only gc.collect
    assert df.iloc[2]["status"].startswith("skipped: FP16 needs CUDA")  # reported, not faked
    assert df.iloc[3]["status"].startswith("skipped: CUDA graphs need CUDA")
    # quality beside speed: FP32 graphs-off against its own one-at-a-time reference is (nearly) lossless
    assert (ok["nonfinite_items"] == 0).all() and (ok["frames_changed_share"] <= 1 / 3).all()
    assert ok.iloc[0]["mcd_db"] < 0.5 and (ok["mcd_db"] < 2.0).all(), ok["mcd_db"].tolist()
    assert df.iloc[2:]["mcd_db"].isna().all()  # skipped rows measure nothing
    assert steps == [0, 1, 2, 3, 4]
    # where the time went, per setting: the stage shares add up to one; 4 callers at max batch 1 wait in the queue
    # behind each other, at max batch 4 they share one batch and the model's stages take the larger part
    shares = ok[[f"share_{s}" for s in REQUEST_STAGES]]
    assert (shares.sum(axis=1) - 1).abs().max() < 1e-6
    assert (ok["share_decoder"] > 0).all() and (ok["share_vocoder"] > 0).all()
    assert ok.iloc[0]["share_queue"] > ok.iloc[1]["share_queue"]
    assert df["capacity_concurrency"].isna().all()  # no p95 target asked for: no search
    assert svc.settings.max_batch_size == 2  # restored afterwards
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert list(back.columns) == COLUMNS and back["setting"].tolist() == df["setting"].tolist()
    pd.testing.assert_series_equal(back["throughput_audio_s_per_s"], df["throughput_audio_s_per_s"], check_dtype=False)


CUDA_TEXTS = sentence_list("cuda_texts")  # profiling/sentences_zh.json: also exported for the GPU box (gpu_prepare.sh)


@pytest.mark.requires_cuda
def test_fp16_and_graph_settings_run_on_cuda(cuda_engine):
    svc = TTSService(cuda_engine, BatchSettings(max_batch_size=4)).start(warmup=False)
    texts = CUDA_TEXTS
    df = run_grid(svc, None, [GridPoint(True, 4, True), GridPoint(False, 4, False, True), GridPoint(True, 4, False, True)],
                  texts, concurrency=4, quality_texts=4)
    svc.close()
    assert (df["status"] == "ok").all(), df["status"].tolist()
    assert df.iloc[0]["precision"].startswith("fp16") and df.iloc[1]["precision"] == "fp32"
    assert (df["peak_torch_allocated_mib"] > 0).all()
    # against the FP32 graphs-off reference: finite, lengths kept for most items, distortion small
    assert (df["nonfinite_items"] == 0).all()
    assert df.iloc[1]["frames_changed_share"] <= 0.25 and df.iloc[1]["mcd_db"] < 1.0  # graphs alone change ~nothing
    assert (df["frames_changed_share"] <= 0.5).all() and (df["mcd_db"] < 3.0).all(), df[["mcd_db", "frames_changed_share"]]
