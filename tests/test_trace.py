"""Trace on demand: the analysis of Chrome trace events, and real recordings from a service serving real requests."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from app import spans
from app.service import TTSService
from app.settings import BatchSettings
from app.spans import BatchSpans, Span
from profiling import trace_report
from profiling.trace import MAX_BATCHES, TraceBusyError, TraceRecorder, check_batches

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["春天来了，花儿开了。", "我们一起去公园散步吧。", "今天下雨了。", "小鸟在唱歌。"]


# --- the analysis, on a trace written by hand ------------------------------------------------------------------
def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}


def _hand_trace() -> dict:
    """One batch: an encoder op, two decoder steps of two ops each (one launching a kernel), a graph replay."""
    return {"traceEvents": [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "worker"}},
        _x("user_annotation", "batch", 0, 100),
        _x("user_annotation", "stage:encoder", 0, 20),
        _x("cpu_op", "aten::conv1d", 1, 18),
        _x("cpu_op", "aten::convolution", 2, 10),  # child: conv1d's self time is 18 - 10
        _x("user_annotation", "stage:decoder", 20, 60),
        _x("cpu_op", "aten::addmm", 21, 9),
        _x("cuda_runtime", "cudaLaunchKernel", 22, 2, correlation=7),
        _x("cpu_op", "aten::tanh", 31, 4),
        _x("cpu_op", "aten::addmm", 41, 9),
        _x("cuda_runtime", "cudaGraphLaunch", 42, 2, correlation=8),
        _x("cpu_op", "aten::tanh", 51, 4),
        _x("user_annotation", "stage:vocoder", 80, 20),
        _x("cpu_op", "aten::conv1d", 81, 10),
        _x("cpu_op", "aten::empty", 200, 1),  # outside every batch: ignored
        _x("kernel", "gemm_kernel", 25, 10, tid=7, correlation=7),
        _x("kernel", "graph_kernel_a", 45, 5, tid=7, correlation=8),
        _x("kernel", "graph_kernel_b", 50, 5, tid=7, correlation=8),
    ]}


def _records(steps=2, frames=4) -> list[BatchSpans]:
    return [BatchSpans(0, 0.0, 2, 1e-4, (Span("decoder", 2e-5, 6e-5, steps, frames),))]


def test_ops_are_grouped_by_stage_with_self_time_and_share():
    events = trace_report.complete_events(_hand_trace())
    trace_report.attribute(events)
    ops = trace_report.ops_table(events)
    assert list(ops.columns) == trace_report.OPS_COLUMNS
    assert list(dict.fromkeys(ops["stage"])) == ["encoder", "decoder", "vocoder"]
    conv = ops[(ops["stage"] == "encoder") & (ops["name"] == "aten::conv1d")].iloc[0]
    assert conv["calls"] == 1 and conv["self_ms"] == pytest.approx(0.008) and conv["share_of_stage"] == pytest.approx(0.4)
    addmm = ops[(ops["stage"] == "decoder") & (ops["name"] == "aten::addmm")].iloc[0]
    assert addmm["calls"] == 2 and addmm["self_ms"] == pytest.approx(0.018)
    kernels = ops[ops["kind"] == "GPU kernel"]
    assert set(kernels["name"]) == {"gemm_kernel", "graph_kernel_a", "graph_kernel_b"} and set(kernels["stage"]) == {"decoder"}
    assert "aten::empty" not in set(ops["name"])


def test_launch_figures_count_from_the_trace():
    events = trace_report.complete_events(_hand_trace())
    trace_report.attribute(events)
    f = trace_report.launch_figures(events, _records(steps=2, frames=4))
    assert f["host_ops_per_frame"] == 4 / 4 and f["host_ops_per_step"] == 4 / 2
    assert f["launches_per_frame"] == 2 / 4 and f["graph_launches"] == 1  # one kernel launch, one graph replay
    assert f["kernels_per_frame"] == 3 / 4 and f["kernels_per_step"] == 3 / 2
    assert f["gpu_busy_share"] == pytest.approx(20 / 100)  # kernels ran 25-35 and 45-55 of a 100 us batch
    assert f["host_ops_per_batch"] == 7  # encoder 2, decoder 4, vocoder 1


def test_a_kernel_without_a_linked_launch_belongs_to_the_stage_it_ran_in():
    trace = _hand_trace()
    for e in trace["traceEvents"]:
        if e.get("name") == "graph_kernel_b":
            e["args"] = {}  # no correlation id: placed by time (45-55 lies in the decoder's 20-80 range)
    trace["traceEvents"].append(_x("kernel", "late_kernel", 300, 5, tid=7))  # after every batch: nowhere
    events = trace_report.complete_events(trace)
    trace_report.attribute(events)
    placed = {e.name: e.stage for e in events if e.cat == "kernel"}
    assert placed == {"gemm_kernel": "decoder", "graph_kernel_a": "decoder", "graph_kernel_b": "decoder", "late_kernel": None}


def test_without_kernels_the_gpu_figures_are_not_numbers():
    trace = _hand_trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("cat") not in ("kernel", "cuda_runtime")]
    events = trace_report.complete_events(trace)
    trace_report.attribute(events)
    f = trace_report.launch_figures(events, _records())
    assert f["host_ops_per_frame"] == 1.0
    assert all(f[k] != f[k] for k in ("launches_per_frame", "kernels_per_frame", "gpu_busy_share"))


def test_the_file_is_bounded_keeping_ranges_and_the_first_events():
    trace = _hand_trace()
    bounded, dropped = trace_report.bounded_events(trace, max_events=10)
    kept = bounded["traceEvents"]
    assert dropped > 0 and len(kept) <= 11  # plus the marker saying where it was cut
    assert {e["name"] for e in kept if e.get("cat") == "user_annotation"} == {"batch", "stage:encoder", "stage:decoder", "stage:vocoder"}
    assert any(e.get("ph") == "i" and "truncated" in e["name"] for e in kept)
    assert trace_report.bounded_events(trace, max_events=1000) == (trace, 0)


def test_batches_are_checked_at_the_edge():
    assert check_batches(5) == 5 and check_batches(3.0) == 3
    for bad in (0, MAX_BATCHES + 1, 2.5, None, "5"):
        with pytest.raises(ValueError, match=f"1 to {MAX_BATCHES} batches"):
            check_batches(bad)


# --- real recordings -------------------------------------------------------------------------------------------
def _serve_until(svc: TTSService, stop: threading.Event, texts: list[str] = TEXTS, clients: int = 2) -> list[threading.Thread]:
    """Real requests from `clients` closed-loop callers until stop is set."""
    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            svc.submit(texts[i % len(texts)], "Aijia")
            i += clients

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    return threads


def _ops_in_ranges(trace: dict, stage: str) -> int:
    """cpu_op events inside the stage's ranges, counted here independently of profiling.trace_report."""
    ranges = [(e["tid"], e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"]
              if e.get("cat") == "user_annotation" and e["name"] == f"stage:{stage}"]
    return sum(1 for e in trace["traceEvents"] if e.get("cat") == "cpu_op" for tid, lo, hi in ranges
               if e["tid"] == tid and lo <= e["ts"] < hi)


def test_a_trace_of_the_running_service_has_its_stages_and_is_exclusive(engine, tmp_path):
    svc = TTSService(engine, BatchSettings(max_batch_size=2, max_wait_ms=50)).start(warmup=False)
    recorder = TraceRecorder(svc, tmp_path)
    stop = threading.Event()
    clients = _serve_until(svc, stop)
    outcome: dict = {}
    first = threading.Thread(target=lambda: outcome.update(result=recorder.record(batches=2, timeout_s=300)))
    try:
        first.start()
        deadline = time.monotonic() + 60
        while not recorder.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(TraceBusyError, match="already being recorded"):
            recorder.record(batches=1)
        first.join(300)
    finally:
        stop.set()
        for t in clients:
            t.join(120)
        svc.close()
    result = outcome["result"]
    assert len(result.records) == 2 and all(r.ok for r in result.records)
    assert not torch.autograd.profiler._is_profiler_enabled and not spans._trace_ranges  # detached: costs nothing now
    stages = set(result.ops["stage"])
    assert {"encoder", "decoder", "vocoder"} <= stages
    decoder_ops = set(result.ops[result.ops["stage"] == "decoder"]["name"])
    vocoder_ops = set(result.ops[result.ops["stage"] == "vocoder"]["name"])
    assert any("addmm" in n or "lstm" in n.lower() for n in decoder_ops), decoder_ops  # the decoder's matmuls / LSTM cells
    assert any("conv" in n for n in vocoder_ops), vocoder_ops  # MelGAN's convolutions
    assert (result.ops["self_ms"] >= 0).all() and (result.ops["share_of_stage"] <= 1.0 + 1e-6).all()
    # the file: gzipped Chrome trace JSON with the stage ranges, and the figure computed from what it holds
    assert result.path.endswith(".json.gz") and Path(result.path).parent == tmp_path
    with gzip.open(result.path, "rt", encoding="utf8") as f:
        trace = json.load(f)
    names = {e["name"] for e in trace["traceEvents"] if e.get("cat") == "user_annotation"}
    assert {"batch", "stage:frontend", "stage:encoder", "stage:decoder", "stage:postnet", "stage:vocoder"} <= names
    frames = sum(r.frames for r in result.records)
    assert frames > 0 and result.figures["decoder_frames"] == frames
    assert result.figures["host_ops_per_frame"] == pytest.approx(_ops_in_ranges(trace, "decoder") / frames)
    assert result.figures["host_ops_per_frame"] > 10  # a step is dozens of small ops on the host
    assert "host op calls per decoded frame" in result.summary()


def test_a_recording_without_traffic_ends_by_its_timeout_and_detaches(engine, tmp_path):
    svc = TTSService(engine, BatchSettings(max_batch_size=2)).start(warmup=False)
    try:
        t0 = time.monotonic()
        result = TraceRecorder(svc, tmp_path).record(batches=3, timeout_s=1.0)
        elapsed = time.monotonic() - t0
        assert result.records == [] and result.path is None and "no batch ran" in result.summary()
        assert elapsed < 30 and not torch.autograd.profiler._is_profiler_enabled
        assert svc.submit("你好。", "Aijia").audio.size > 0  # the worker serves on, unwatched
    finally:
        svc.close()
    assert list(tmp_path.iterdir()) == []


def test_a_service_without_its_engine_here_cannot_be_traced():
    class Front:  # the replicas' front: no batch worker in this process
        owns_engine = False

    with pytest.raises(ValueError, match="--ray-replicas"):
        TraceRecorder(Front()).record(batches=1)


def test_the_cli_traces_the_workload_and_writes_its_tables(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:2]), encoding="utf8")
    out = tmp_path / "trace.csv"
    proc = subprocess.run([sys.executable, "-m", "profiling.trace", "--device", "cpu", "--batch", "2", "--batches", "1",
                           "--texts", str(texts), "--no-warmup", "--trace-dir", str(tmp_path / "traces"), "--out", str(out),
                           "--ops-out", str(tmp_path / "trace-ops.csv")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    row = pd.read_csv(out).iloc[0]
    assert row["status"] == "ok" and row["batches_traced"] == 1 and row["host_ops_per_frame"] > 10
    assert 0 < row["share_decoder"] < 1 and Path(row["trace"]).exists()
    ops = pd.read_csv(tmp_path / "trace-ops.csv")
    assert {"decoder", "vocoder"} <= set(ops["stage"])


@pytest.mark.requires_cuda
def test_cuda_trace_has_kernels_and_graphs_cut_the_launches(cuda_engine, tmp_path):
    svc = TTSService(cuda_engine, BatchSettings(max_batch_size=4, max_wait_ms=50, cuda_graphs=False)).start(warmup=False)
    recorder = TraceRecorder(svc, tmp_path)
    figures = {}
    try:
        for graphs in (False, True):
            applied = svc.apply_settings(cuda_graphs=graphs)
            assert applied.cuda_graphs == graphs, cuda_engine.notes
            svc.submit(TEXTS_CUDA[0], "Aijia")  # warm this decoder path
            stop = threading.Event()
            threads = _serve_until(svc, stop, TEXTS_CUDA, clients=4)
            result = recorder.record(batches=2, timeout_s=120)
            stop.set()
            for t in threads:
                t.join(120)
            figures[graphs] = result.figures
            assert (result.ops["kind"] == "GPU kernel").any()
    finally:
        svc.close()
    print("kernels per frame, graphs off/on:", figures[False]["kernels_per_frame"], figures[True]["kernels_per_frame"],
          "launches per frame:", figures[False]["launches_per_frame"], figures[True]["launches_per_frame"])
    assert figures[False]["kernels_per_frame"] > 0 and figures[True]["kernels_per_frame"] > 0
    assert figures[True]["graph_launches"] > 0 and figures[False]["graph_launches"] == 0
    assert figures[True]["launches_per_step"] < figures[False]["launches_per_step"] / 5  # a replay is one launch per chunk
    assert 0 < figures[False]["gpu_busy_share"] <= 1


TEXTS_CUDA = ["你好。", "谢谢。", "今天天气很好。", "我们一起去公园散步吧。"]  # exported for the GPU box (CUDA_TEXTS)
