"""Pure functions from monitor and comparison DataFrames to compact plotly figures; no I/O."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from app.spans import REQUEST_STAGES

PANEL_HEIGHT_PX = 260  # live side-panel charts
COMPARISON_HEIGHT_PX = 300  # comparison charts: room for three-line setting labels under the bars
NO_DATA = "no data yet"
RSS_TITLE = "Memory (MiB): process RSS (no GPU)"

# One colour per quantity across every chart, so "reserved" looks the same everywhere.
COLORS = {
    "vram_used_mib": "#1f77b4",
    "vram_total_mib": "#7f7f7f",
    "proc_vram_mib": "#17becf",
    "torch_reserved_mib": "#ff7f0e",
    "torch_allocated_mib": "#2ca02c",
    "rss_mib": "#9467bd",
    "gpu_util_pct": "#d62728",
    "cpu_pct": "#9467bd",
    "size": "#2ca02c",
    "queue_depth": "#1f77b4",
    "p50_latency_s": "#1f77b4",
    "p95_latency_s": "#ff7f0e",
    "throughput_audio_s_per_s": "#2ca02c",
    "peak_torch_allocated_mib": "#2ca02c",
    "peak_torch_reserved_mib": "#ff7f0e",
    "peak_vram_used_mib": "#1f77b4",
    "capacity_concurrency": "#9467bd",
}
# One colour per stage (app.spans.REQUEST_STAGES), the same in every stage chart.
STAGE_COLORS = {
    "frontend": "#8c564b", "queue": "#c7c7c7", "encoder": "#17becf", "decoder": "#d62728", "postnet": "#ff9896",
    "pipeline": "#bcbd22", "vocoder": "#1f77b4", "other": "#7f7f7f", "post": "#9467bd", "audio": "#2ca02c",
}
STAGE_BATCHES = 40  # the stage chart shows this many recent batches

# (column, legend name, dash) for the device-memory chart, drawn in this order.
MEMORY_TRACES = (
    ("vram_total_mib", "device total", "dash"),
    ("vram_used_mib", "device used", "solid"),
    ("proc_vram_mib", "this process", "dot"),
    ("torch_reserved_mib", "torch reserved", "solid"),
    ("torch_allocated_mib", "torch allocated", "solid"),
)
GPU_MEMORY_COLUMNS = ("vram_used_mib", "vram_total_mib", "torch_allocated_mib", "torch_reserved_mib")


def memory_figure(samples_df: pd.DataFrame) -> go.Figure:
    """Device used/total, this process, torch reserved/allocated over time (MiB); process RSS without a GPU."""
    if _no_rows(samples_df):  # nothing sampled yet: too early to claim there is no GPU
        return _no_data(_figure("Memory (MiB)", "MiB", uirevision="memory"))
    if not any(_series(samples_df, column) is not None for column in GPU_MEMORY_COLUMNS):
        return _rss_figure(samples_df)
    fig = _figure("GPU memory (MiB)", "MiB", uirevision="memory")
    x_s = _seconds_ago(samples_df["t"], _latest_t(samples_df))
    for column, name, dash in MEMORY_TRACES:
        values = _series(samples_df, column)
        if values is not None:
            fig.add_trace(_line(x_s, values, name, column, dash=dash))
    return fig


def utilization_figure(samples_df: pd.DataFrame) -> go.Figure:
    """GPU utilization (%) over time; this process's CPU use when there is no GPU reading."""
    if _no_rows(samples_df):
        return _no_data(_figure("Utilization (%)", "%", uirevision="utilization"))
    gpu_pct = _series(samples_df, "gpu_util_pct")
    if gpu_pct is None:
        fig = _figure("Process CPU (%, 100 = one core), no GPU", "%", uirevision="utilization")
        cpu_pct = _series(samples_df, "cpu_pct")
        if cpu_pct is None:
            return _no_data(fig)
        x_s = _seconds_ago(samples_df["t"], _latest_t(samples_df))
        fig.add_trace(_line(x_s, cpu_pct, "process CPU", "cpu_pct"))
        fig.update_yaxes(rangemode="tozero")
        return fig
    fig = _figure("GPU utilization (%)", "%", uirevision="utilization")
    x_s = _seconds_ago(samples_df["t"], _latest_t(samples_df))
    fig.add_trace(_line(x_s, gpu_pct, "GPU busy", "gpu_util_pct"))
    fig.update_yaxes(range=[0, 105])  # fixed scale: 30% should look like 30%, not like a full chart
    return fig


def batches_figure(batches_df: pd.DataFrame, samples_df: pd.DataFrame) -> go.Figure:
    """Sizes of the batches actually formed (markers; columns t, size, optional ok) and queue depth over time."""
    fig = _figure("Batches formed and queue depth", "items", uirevision="batches")
    sizes = _series(batches_df, "size")
    depths = _series(samples_df, "queue_depth")
    if sizes is None and depths is None:
        return _no_data(fig)
    # One time reference for both frames so a batch lines up with the queue it drained.
    t_ref = max(_latest_t(batches_df if sizes is not None else None),
                _latest_t(samples_df if depths is not None else None))
    if depths is not None:
        fig.add_trace(_line(_seconds_ago(samples_df["t"], t_ref), depths, "queue depth", "queue_depth", shape="hv"))
    if sizes is not None:
        x_s = _seconds_ago(batches_df["t"], t_ref)
        # The service's batch log carries ok=False for a failed engine call: show those apart.
        ok = batches_df["ok"] if "ok" in batches_df.columns else pd.Series(True, index=batches_df.index)
        failed = ok.eq(False).to_numpy()
        fig.add_trace(go.Scatter(
            x=x_s[~failed], y=sizes[~failed], name="batch size", mode="markers",
            marker=dict(size=7, color=COLORS["size"]),
            hovertemplate="%{x:.1f}s: batch of %{y}<extra></extra>",
        ))
        if failed.any():
            fig.add_trace(go.Scatter(
                x=x_s[failed], y=sizes[failed], name="failed batch", mode="markers",
                marker=dict(size=9, color="#d62728", symbol="x"),
                hovertemplate="%{x:.1f}s: failed batch of %{y}<extra></extra>",
            ))
    fig.update_yaxes(rangemode="tozero")
    return fig


def comparison_figures(results_df: pd.DataFrame) -> dict[str, go.Figure]:
    """Bar charts for a settings comparison: latency (p50/p95), throughput (with RTF), peak memory, the share of
    request time by stage, and the capacity under a p95 target (when searched)."""
    labels = _setting_labels(results_df)

    latency = _figure("Latency (s)", "seconds", height_px=COMPARISON_HEIGHT_PX)
    for column, name in (("p50_latency_s", "p50"), ("p95_latency_s", "p95")):
        _add_bar(latency, labels, results_df, column, name)
    latency.update_layout(barmode="group")

    throughput = _figure("Throughput (audio s per wall s)", "audio s / s", height_px=COMPARISON_HEIGHT_PX)
    _add_bar(throughput, labels, results_df, "throughput_audio_s_per_s", "throughput",
             # Real-time factor on the bar: the number people quote for TTS speed.
             text=[_rtf_text(value) for value in _column(results_df, "rtf")],
             hover="%{x}<br>%{y:.2f} audio s per s<extra></extra>")

    memory = _figure("Peak memory (MiB)", "MiB", height_px=COMPARISON_HEIGHT_PX)
    for column, name in (("peak_torch_allocated_mib", "torch allocated"),
                         ("peak_torch_reserved_mib", "torch reserved"),
                         ("peak_vram_used_mib", "device used")):
        _add_bar(memory, labels, results_df, column, name)
    memory.update_layout(barmode="group")

    stages = _figure("Share of request time by stage", "%", height_px=COMPARISON_HEIGHT_PX)
    for stage in REQUEST_STAGES:
        values = _values(results_df, f"share_{stage}")
        if values is not None and (values > 0).any():
            stages.add_trace(go.Bar(x=labels, y=100 * values, name=stage, marker_color=STAGE_COLORS[stage],
                                    hovertemplate=f"%{{x}}<br>{stage}: %{{y:.1f}}%<extra></extra>"))
    stages.update_layout(barmode="stack")

    capacity = _figure("Capacity: most clients within the p95 target", "clients", height_px=COMPARISON_HEIGHT_PX)
    _add_bar(capacity, labels, results_df, "capacity_concurrency", "clients",
             text=["" if math.isnan(t) else f"{t:.1f} audio s/s" for t in _column(results_df, "capacity_throughput_audio_s_per_s")],
             hover="%{x}<br>%{y} clients within the target<extra></extra>")

    return {name: fig if fig.data else _no_data(fig)
            for name, fig in (("latency", latency), ("throughput", throughput), ("memory", memory), ("stages", stages),
                              ("capacity", capacity))}


def stage_figure(spans_df: pd.DataFrame) -> go.Figure:
    """Where each recent batch's time went: one stacked bar per engine call, one colour per stage.

    spans_df: one row per (batch, stage) with columns batch (label), stage, seconds and optional size, steps, frames
    (the handlers build it from the service's span log).
    """
    fig = _figure("Stages per batch (s)", "seconds", uirevision="stages")
    if spans_df is None or spans_df.empty or not {"batch", "stage", "seconds"} <= set(spans_df.columns):
        return _no_data(fig)
    order = list(dict.fromkeys(spans_df["batch"]))[-STAGE_BATCHES:]
    shown = spans_df[spans_df["batch"].isin(order)]
    for stage in [s for s in REQUEST_STAGES if s in set(shown["stage"])]:
        rows = shown[shown["stage"] == stage].set_index("batch").reindex(order)
        extra = "" if stage != "decoder" or "steps" not in rows else "<br>%{customdata[0]} steps, %{customdata[1]} frames"
        fig.add_trace(go.Bar(
            x=order, y=rows["seconds"], name=stage, marker_color=STAGE_COLORS.get(stage, "#7f7f7f"),
            customdata=rows[["steps", "frames"]].fillna(0).astype(int).to_numpy() if extra else None,
            hovertemplate=f"%{{x}}<br>{stage}: %{{y:.3f}} s{extra}<extra></extra>",
        ))
    fig.update_layout(barmode="stack", hovermode="closest")
    fig.update_xaxes(type="category", ticksuffix="", showticklabels=len(order) <= 12)
    return fig


def stage_share_figure(share: dict[str, float], title: str = "Share of request time by stage") -> go.Figure:
    """One 100% bar: each stage's share of the time requests spent (share: stage -> 0-1, e.g. app.timings.stage_share)."""
    fig = _figure(title, "", height_px=150)
    shown = {stage: share[stage] for stage in REQUEST_STAGES if share.get(stage, 0.0) > 0}
    if not shown:
        return _no_data(fig)
    for stage, value in shown.items():
        fig.add_trace(go.Bar(
            x=[100 * value], y=[""], orientation="h", name=stage, marker_color=STAGE_COLORS.get(stage, "#7f7f7f"),
            text=[f"{stage} {100 * value:.0f}%" if value >= 0.08 else ""], textposition="inside", insidetextanchor="middle",
            hovertemplate=f"{stage}: %{{x:.1f}}%<extra></extra>",
        ))
    fig.update_layout(barmode="stack", showlegend=False, margin=dict(l=8, r=8, t=32, b=8))
    fig.update_xaxes(range=[0, 100], ticksuffix="%")
    return fig


# -- helpers -------------------------------------------------------------------------------------------


def _figure(title: str, y_title: str, height_px: int = PANEL_HEIGHT_PX, uirevision: str | None = None) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=13)),
        height=height_px,
        margin=dict(l=48, r=8, t=32, b=8),  # plotly grows the bottom margin to fit the legend below
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.12, yanchor="top", font=dict(size=10)),
        font=dict(size=11),
        template="plotly_white",
        hovermode="x unified" if uirevision else "closest",
        # A live chart is redrawn every tick; a constant uirevision keeps the user's zoom and legend toggles.
        uirevision=uirevision,
    )
    fig.update_yaxes(title=dict(text=y_title, standoff=4))
    if uirevision:
        fig.update_xaxes(ticksuffix="s", zeroline=False)  # -30s reads as "30 seconds ago"
    return fig


def _no_data(fig: go.Figure, message: str = NO_DATA) -> go.Figure:
    fig.add_annotation(text=message, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=13, color="#7f7f7f"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _rss_figure(samples_df: pd.DataFrame) -> go.Figure:
    fig = _figure(RSS_TITLE, "MiB", uirevision="memory")
    rss = _series(samples_df, "rss_mib")
    if rss is None:
        return _no_data(fig)
    fig.add_trace(_line(_seconds_ago(samples_df["t"], _latest_t(samples_df)), rss, "process RSS", "rss_mib"))
    return fig


def _line(
    x_s: pd.Series, y: pd.Series, name: str, column: str, dash: str = "solid", shape: str = "linear"
) -> go.Scatter:
    return go.Scatter(x=x_s, y=y, name=name, mode="lines",
                      line=dict(color=COLORS[column], dash=dash, width=1.5, shape=shape),
                      hovertemplate=f"{name}: %{{y:.1f}}<extra></extra>")


def _add_bar(fig: go.Figure, labels: list[str], df: pd.DataFrame, column: str, name: str,
             text: list[str] | None = None, hover: str | None = None) -> None:
    """One bar per setting from df[column] (nothing when the column has no value); text is written on the bars."""
    values = _values(df, column)
    if values is not None:
        fig.add_trace(go.Bar(x=labels, y=values, name=name, marker_color=COLORS[column], text=text,
                             textposition="auto" if text is not None else None,
                             hovertemplate=hover or f"%{{x}}<br>{name}: %{{y:.3g}}<extra></extra>"))


def _column(df: pd.DataFrame | None, column: str) -> pd.Series:
    """The column as floats (NaN where missing or not numeric); all NaN when the frame lacks it."""
    if df is None or column not in df.columns:
        return pd.Series(math.nan, index=range(0 if df is None else len(df)), dtype="float64")
    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _values(df: pd.DataFrame | None, column: str) -> pd.Series | None:
    """The column as floats, or None when there is nothing to plot (no frame, no column, all NaN)."""
    if df is None or df.empty or column not in df.columns:
        return None
    values = _column(df, column)
    return None if values.isna().all() else values


def _series(df: pd.DataFrame | None, column: str) -> pd.Series | None:
    """Like _values, for a time series: without a t column there is no x axis."""
    return _values(df, column) if df is not None and "t" in df.columns else None


def _no_rows(df: pd.DataFrame | None) -> bool:
    return df is None or df.empty or "t" not in df.columns


def _latest_t(df: pd.DataFrame | None) -> float:
    if df is None or "t" not in df.columns or df.empty:
        return -math.inf
    return float(pd.to_numeric(df["t"], errors="coerce").max())


def _seconds_ago(t: pd.Series, t_ref: float) -> pd.Series:
    """Seconds relative to the newest sample (0 = latest, negative = earlier): pure, no clock read."""
    return pd.to_numeric(t, errors="coerce").astype("float64") - t_ref


def _setting_labels(results_df: pd.DataFrame) -> list[str]:
    # "fp16=on batch=8 clear=off" as three short lines fits under a narrow bar.
    settings = results_df["setting"] if "setting" in results_df.columns else pd.Series(
        [f"run {i + 1}" for i in range(len(results_df))], index=results_df.index)
    errors = _column(results_df, "errors")
    labels = []
    for setting, error_count in zip(settings, errors):
        label = "<br>".join(str(setting).split())
        if error_count > 0:  # NaN compares false: no note
            label += f"<br>({int(error_count)} errors)"
        labels.append(label)
    return labels


def _rtf_text(rtf: float) -> str:
    return "" if math.isnan(rtf) else f"RTF {rtf:.2f}"
