"""Plots: expected traces for small frames, fallbacks without a GPU, empty frames never raise."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import pytest

from profiling import plots
from profiling.monitor import NVML_COLUMNS, SAMPLE_COLUMNS, TORCH_COLUMNS

T0 = 1_700_000_000.0


def _samples(n: int = 8, gpu: bool = True, queue: bool = True) -> pd.DataFrame:
    df = pd.DataFrame({column: [float(10 + i) for i in range(n)] for column in SAMPLE_COLUMNS})
    df["t"] = [T0 + 0.25 * i for i in range(n)]
    if not gpu:
        df[list(NVML_COLUMNS + TORCH_COLUMNS)] = math.nan
    if queue:
        df["queue_depth"] = [0, 2, 5, 3, 1, 0, 0, 1][:n]
    return df


def _results() -> pd.DataFrame:
    return pd.DataFrame({
        "setting": ["fp16=on batch=8 clear=off", "fp16=off batch=1 clear=on"],
        "p50_latency_s": [0.4, 1.1], "p95_latency_s": [0.9, 2.3],
        "throughput_audio_s_per_s": [25.0, 6.0], "rtf": [0.04, 0.17],
        "peak_torch_allocated_mib": [900.0, 1500.0], "peak_torch_reserved_mib": [1200.0, 1600.0],
        "peak_vram_used_mib": [2000.0, 2400.0], "mean_gpu_util_pct": [70.0, 35.0], "errors": [0, 3],
    })


def _names(fig: go.Figure) -> list[str]:
    return [trace.name for trace in fig.data]


def _says_no_data(fig: go.Figure) -> bool:
    return isinstance(fig, go.Figure) and not fig.data and [a.text for a in fig.layout.annotations] == [plots.NO_DATA]


def test_memory_figure_with_gpu() -> None:
    fig = plots.memory_figure(_samples())
    assert _names(fig) == ["device total", "device used", "this process", "torch reserved", "torch allocated"]
    assert "GPU" in fig.layout.title.text
    assert fig.layout.height == plots.PANEL_HEIGHT_PX and fig.layout.legend.orientation == "h"
    x_s = list(fig.data[0].x)
    assert x_s[-1] == 0.0 and x_s[0] == pytest.approx(-1.75)  # seconds before the latest sample


def test_memory_figure_without_gpu_plots_rss() -> None:
    fig = plots.memory_figure(_samples(gpu=False))
    assert _names(fig) == ["process RSS"]
    assert "process RSS (no GPU)" in fig.layout.title.text


def test_memory_figure_skips_torch_lines_before_cuda_is_initialised() -> None:
    df = _samples()
    df[list(TORCH_COLUMNS)] = math.nan
    assert _names(plots.memory_figure(df)) == ["device total", "device used", "this process"]


def test_utilization_figure_gpu_and_cpu_fallback() -> None:
    assert _names(plots.utilization_figure(_samples())) == ["GPU busy"]
    fallback = plots.utilization_figure(_samples(gpu=False))
    assert _names(fallback) == ["process CPU"] and "no GPU" in fallback.layout.title.text


def test_batches_figure_aligns_batches_with_queue_depth() -> None:
    batches = pd.DataFrame({"t": [T0 + 0.5, T0 + 1.0, T0 + 2.0], "size": [1, 4, 8]})
    fig = plots.batches_figure(batches, _samples())
    assert _names(fig) == ["queue depth", "batch size"]
    assert list(fig.data[1].x) == [-1.5, -1.0, 0.0]  # the newest event of either frame is 0
    assert list(fig.data[1].y) == [1, 4, 8]
    assert _names(plots.batches_figure(batches, _samples(queue=False))) == ["batch size"]
    assert _names(plots.batches_figure(pd.DataFrame(columns=["t", "size"]), _samples())) == ["queue depth"]


def test_batches_figure_marks_failed_batches() -> None:
    batches = pd.DataFrame({"t": [T0, T0 + 1.0], "size": [4, 8], "ok": [True, False]})
    fig = plots.batches_figure(batches, _samples(queue=False))
    assert _names(fig) == ["batch size", "failed batch"]
    assert list(fig.data[1].y) == [8]


def test_comparison_figures() -> None:
    figs = plots.comparison_figures(_results())
    assert set(figs) == {"latency", "throughput", "memory", "stages", "capacity"}
    assert _says_no_data(figs["stages"]) and _says_no_data(figs["capacity"])  # neither measured in these rows
    assert _names(figs["latency"]) == ["p50", "p95"] and figs["latency"].layout.barmode == "group"
    assert _names(figs["throughput"]) == ["throughput"]
    assert list(figs["throughput"].data[0].text) == ["RTF 0.04", "RTF 0.17"]
    assert _names(figs["memory"]) == ["torch allocated", "torch reserved", "device used"]
    labels = list(figs["latency"].data[0].x)
    assert labels[0] == "fp16=on<br>batch=8<br>clear=off" and labels[1].endswith("(3 errors)")


def test_comparison_without_gpu_memory_says_no_data() -> None:
    results = _results()
    results[["peak_torch_allocated_mib", "peak_torch_reserved_mib", "peak_vram_used_mib"]] = math.nan
    figs = plots.comparison_figures(results)
    assert _says_no_data(figs["memory"]) and _names(figs["latency"]) == ["p50", "p95"]


def _stages() -> pd.DataFrame:
    rows = [("#1 (1)", "frontend", 0.01, 1, 0, 0), ("#1 (1)", "decoder", 0.50, 1, 200, 200), ("#1 (1)", "vocoder", 0.30, 1, 0, 0),
            ("#2 (8)", "frontend", 0.02, 8, 0, 0), ("#2 (8)", "decoder", 0.90, 8, 240, 1500), ("#2 (8)", "vocoder", 1.20, 8, 0, 0),
            ("#2 (8)", "other", 0.01, 8, 0, 0)]
    return pd.DataFrame(rows, columns=["batch", "stage", "seconds", "size", "steps", "frames"])


def test_stage_figure_stacks_each_batch_by_stage_in_time_order() -> None:
    fig = plots.stage_figure(_stages())
    assert fig.layout.barmode == "stack" and _names(fig) == ["frontend", "decoder", "vocoder", "other"]
    decoder = fig.data[1]
    assert list(decoder.x) == ["#1 (1)", "#2 (8)"] and list(decoder.y) == [0.5, 0.9]
    assert [list(c) for c in decoder.customdata] == [[200, 200], [240, 1500]]  # steps and frames in the hover
    assert math.isnan(fig.data[3].y[0]) and fig.data[3].y[1] == 0.01  # a stage a batch lacks is a gap, not a shift
    assert fig.data[1].marker.color == plots.STAGE_COLORS["decoder"]


def test_stage_share_figure_is_one_bar_of_percentages() -> None:
    fig = plots.stage_share_figure({"queue": 0.25, "decoder": 0.5, "vocoder": 0.25, "post": 0.0})
    assert _names(fig) == ["queue", "decoder", "vocoder"] and [t.x[0] for t in fig.data] == [25.0, 50.0, 25.0]
    assert fig.data[1].text[0] == "decoder 50%"
    assert _says_no_data(plots.stage_share_figure({}))


def test_comparison_stage_shares_and_capacity() -> None:
    results = _results().assign(share_queue=[0.1, 0.6], share_decoder=[0.6, 0.3], share_vocoder=[0.3, 0.1],
                                capacity_concurrency=[16, 2], capacity_throughput_audio_s_per_s=[30.0, math.nan])
    figs = plots.comparison_figures(results)
    assert _names(figs["stages"]) == ["queue", "decoder", "vocoder"] and list(figs["stages"].data[0].y) == [10.0, 60.0]
    assert list(figs["capacity"].data[0].y) == [16, 2] and list(figs["capacity"].data[0].text) == ["30.0 audio s/s", ""]


@pytest.mark.parametrize("empty", [pd.DataFrame(), pd.DataFrame(columns=list(SAMPLE_COLUMNS))])
def test_empty_frames_never_raise(empty: pd.DataFrame) -> None:
    for fig in (plots.memory_figure(empty), plots.utilization_figure(empty), plots.batches_figure(empty, empty),
                plots.stage_figure(empty), plots.stage_share_figure({}),
                *plots.comparison_figures(empty).values()):
        assert _says_no_data(fig)
        fig.to_json()  # what Gradio does with it
    assert "no GPU" not in plots.memory_figure(empty).layout.title.text  # too early to tell


def test_rows_with_only_nan_say_no_data() -> None:
    df = _samples(n=1, gpu=False, queue=False)
    df[["rss_mib", "cpu_pct"]] = math.nan  # e.g. the first sample has no CPU delta yet
    assert _says_no_data(plots.utilization_figure(df))
    assert _says_no_data(plots.memory_figure(df))


def test_figures_serialise() -> None:
    df = _samples()
    for fig in (plots.memory_figure(df), plots.utilization_figure(df),
                plots.batches_figure(pd.DataFrame({"t": [T0], "size": [2]}), df), plots.stage_figure(_stages()),
                *plots.comparison_figures(_results()).values()):
        assert fig.to_json()
