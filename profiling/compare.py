"""Run one workload under a grid of settings on the resident service -> one row per setting -> CSV/JSON.

CLI: python -m profiling.compare --fp16 on,off --batch 1,4,8 --clear-cache on,off --cuda-graphs on,off --concurrency 8 --out results.csv
     python -m profiling.compare --batch 1,8 --runtime torch,onnxruntime --out runtime.csv   (the vocoder on ONNX Runtime)
     python -m profiling.compare --batch 1,8 --slo-p95 30 --out capacity.csv   (also each setting's capacity under a p95 target)

Every row carries the quality cost of its setting beside its speed: the same texts and seeds are first rendered by the
FP32, graphs-off reference (one at a time), and each setting's audio for them is compared with it (profiling.quality).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from app.spans import REQUEST_STAGES
from profiling.capacity import CAPACITY_BUDGET_S, CAPACITY_COLUMNS, capacity_search, check_slo, default_slo_p95_s
from profiling.loadgen import WORKLOAD_FILE, load_workload, run_load, service_caller, summarize
from profiling.quality import quality_summary

QUALITY_TEXTS = 8  # texts rendered per setting for the quality columns (the workload's first ones)
COLUMNS = [
    "setting", "status", "fp16", "max_batch_size", "clear_cache", "cuda_graphs", "runtime", "requests", "errors", "p50_latency_s",
    "p95_latency_s", "throughput_audio_s_per_s", "rtf", "mcd_db", "frames_changed_share", "nonfinite_items", "mean_batch_size", "peak_torch_allocated_mib", "peak_torch_reserved_mib",
    "peak_vram_used_mib", "mean_gpu_util_pct", "peak_rss_mib", "wall_s", "engine", "device", "precision",
    *[f"share_{stage}" for stage in REQUEST_STAGES],  # each stage's share of the requests' time (app.spans)
    *CAPACITY_COLUMNS,  # with a p95 target: the most clients served within it (profiling.capacity)
]


@dataclass(frozen=True)
class GridPoint:
    """One combination of the live settings under comparison."""

    fp16: bool
    max_batch_size: int
    clear_cache: bool
    cuda_graphs: bool = False
    runtime: str = "torch"  # what runs the vocoder: torch or onnxruntime

    @property
    def label(self) -> str:
        on = lambda b: "on" if b else "off"  # noqa: E731
        return (f"fp16={on(self.fp16)} batch={self.max_batch_size} clear={on(self.clear_cache)} graphs={on(self.cuda_graphs)}"
                f" runtime={self.runtime}")

    def settings(self) -> dict:
        """The live settings this point applies."""
        return dict(fp16=self.fp16, max_batch_size=self.max_batch_size, clear_cache=self.clear_cache, cuda_graphs=self.cuda_graphs,
                    runtime=self.runtime)


REFERENCE = GridPoint(fp16=False, max_batch_size=1, clear_cache=False, cuda_graphs=False)  # what quality is measured against


def make_grid(fp16: Sequence[bool], batch: Sequence[int], clear_cache: Sequence[bool],
              cuda_graphs: Sequence[bool] = (False,), runtime: Sequence[str] = ("torch",)) -> list[GridPoint]:
    """Cartesian product, in the order given."""
    return [GridPoint(f, b, c, g, r) for f, b, c, g, r in itertools.product(fp16, batch, clear_cache, cuda_graphs, runtime)]


def render(service, texts: Sequence[str], concurrency: int) -> list:
    """Each text's audio through the service under the settings in force (seeds come from text and speaker)."""
    speaker = service.engine.default_speaker
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return [r.audio for r in pool.map(lambda t: service.submit(t, speaker), texts)]


def render_reference(service, texts: Sequence[str]) -> list:
    """The quality reference: FP32, graphs off, one text at a time."""
    service.apply_settings(**REFERENCE.settings())
    return render(service, texts, concurrency=1)


def _skip_reason(engine, point: GridPoint) -> str | None:
    if point.fp16 and not engine.fp16_supported:
        return f"skipped: FP16 needs CUDA (device {engine.device})"
    if point.cuda_graphs and not engine.cuda_graphs_supported:
        why = f"need CUDA (device {engine.device})" if engine.cuda_graphs_capable else f"are not available for {engine.name}"
        return f"skipped: CUDA graphs {why}"
    if point.runtime != "torch" and not engine.onnx_parts:
        return f"skipped: ONNX Runtime is not available for {engine.name}"
    return None


def _torch_cuda(service):
    if not service.engine.device.startswith("cuda") or not service.owns_engine:  # replicas: their monitors' figures
        return None
    import torch

    return torch


def run_setting(service, monitor, point: GridPoint, texts: Sequence[str], concurrency: int, repeats: int, warmup: bool = True,
                reference: tuple[Sequence[str], Sequence] | None = None) -> dict:
    """Apply one setting, warm up, run the workload, and measure it; with reference (texts, audio) also its quality."""
    row = {c: float("nan") for c in COLUMNS}
    row.update(setting=point.label, engine=service.engine.name, device=service.engine.device, **point.settings())
    skipped = _skip_reason(service.engine, point)
    if skipped:
        row.update(status=skipped, precision="n/a")
        return row
    applied = service.apply_settings(**point.settings())
    row["precision"] = service.engine.precision
    call = service_caller(service)
    if warmup:
        run_load(call, texts[: max(1, concurrency)], concurrency)
    torch = _torch_cuda(service)
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if monitor is not None:
        monitor.sample_once()
    t0_wall = time.time()
    records, wall_s = run_load(call, texts, concurrency, repeats)
    t1_wall = time.time()
    row.update(summarize(records, wall_s))
    if monitor is not None:
        monitor.sample_once()  # also pulls the replicas' latest telemetry when the service is the Ray Serve front
    # By time, not by position: a replicas' front merges several bounded logs, so positions shift.
    formed = [b.size for b in service.batch_log if b.ok and t0_wall <= b.t <= t1_wall]
    row["mean_batch_size"] = statistics.fmean(formed) if formed else float("nan")
    if monitor is not None:
        summary = monitor.summary(t0_wall, t1_wall)
        for key in ("peak_vram_used_mib", "mean_gpu_util_pct", "peak_rss_mib", "peak_torch_allocated_mib", "peak_torch_reserved_mib"):
            row[key] = summary.get(key, float("nan"))
    if torch is not None:  # exact allocator peaks beat 4 Hz sampling
        row["peak_torch_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        row["peak_torch_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    if reference is not None:
        ref_texts, ref_audio = reference
        row.update(quality_summary(ref_audio, render(service, ref_texts, concurrency), service.engine.sample_rate))
    note = "" if torch is not None or not point.clear_cache else " (no CUDA: cache clearing is only gc.collect)"
    if point.cuda_graphs and not applied.cuda_graphs:
        note += " (CUDA graphs not in force: " + "; ".join(service.engine.notes) + ")"
    if applied.runtime != point.runtime:  # the row measured torch: say why, and do not pass it off as ONNX Runtime
        note += f" ({point.runtime} not in force: " + "; ".join(n for n in service.engine.notes if "ONNX" in n) + ")"
    row["status"] = ("ok" if not row["errors"] else f"{int(row['errors'])} error(s)") + note
    return row


def run_grid(
    service, monitor, points: Sequence[GridPoint], texts: Sequence[str], concurrency: int = 8, repeats: int = 1,
    progress: Callable[[int, int, str], None] | None = None, quality_texts: int = QUALITY_TEXTS,
    slo_p95_s: float | None = None, capacity_budget_s: float = CAPACITY_BUDGET_S,
) -> pd.DataFrame:
    """Every grid point on the same workload; the service's own settings are restored afterwards.

    quality_texts: how many of the texts the reference renders for the quality columns (0: no quality columns).
    slo_p95_s: also search each setting's capacity under this p95 latency target (None: no search).
    """
    if slo_p95_s is not None:
        check_slo(slo_p95_s)
    before = service.settings
    rows = []
    try:
        reference = None
        if quality_texts > 0:
            ref_texts = list(texts[:quality_texts])
            reference = (ref_texts, render_reference(service, ref_texts))
        for i, point in enumerate(points):
            if progress is not None:
                progress(i, len(points), point.label)
            rows.append(run_setting(service, monitor, point, texts, concurrency, repeats, reference=reference))
            if slo_p95_s is not None and rows[-1]["status"].startswith("ok"):  # the setting is still in force
                def step(what: str, i: int = i, label: str = point.label) -> None:
                    if progress is not None:
                        progress(i, len(points), f"{label}: capacity, {what}")

                rows[-1].update(capacity_search(service, texts, slo_p95_s, budget_s=capacity_budget_s, report=step))
    finally:
        service.apply_settings(fp16=before.fp16, max_batch_size=before.max_batch_size, clear_cache=before.clear_cache,
                               cuda_graphs=before.cuda_graphs, runtime=before.runtime)
    if progress is not None:
        progress(len(points), len(points), "done")
    return pd.DataFrame(rows, columns=COLUMNS)


def _on_off(value: str) -> list[bool]:
    out = []
    for item in value.split(","):
        item = item.strip().lower()
        if item not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"{item!r} is not on or off")
        out.append(item == "on")
    return out


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of integers") from None


def _runtimes(value: str) -> list[str]:
    from app.settings import RUNTIMES

    out = [v.strip() for v in value.split(",")]
    bad = [v for v in out if v not in RUNTIMES]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad)} is not one of {', '.join(RUNTIMES)}")
    return out


def _slo(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        return check_slo(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp16", type=_on_off, default=[True, False], help="on,off")
    p.add_argument("--batch", type=_ints, default=[1, 4, 8], help="max batch sizes, e.g. 1,4,8")
    p.add_argument("--clear-cache", type=_on_off, default=[False], help="on,off")
    p.add_argument("--cuda-graphs", type=_on_off, default=[True, False], help="on,off (on is skipped without CUDA)")
    p.add_argument("--runtime", type=_runtimes, default=["torch"], help="torch,onnxruntime: what runs the vocoder")
    p.add_argument("--quality-texts", type=int, default=QUALITY_TEXTS, help="texts rendered for the quality columns (0: none)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--slo-p95", nargs="?", const="auto", type=_slo, metavar="SECONDS",
                   help="also find each setting's capacity: the most clients (1, 2, 4 ... 64) served with p95 latency "
                        "within SECONDS (alone: 1 on CUDA, 30 on a CPU)")
    p.add_argument("--capacity-budget-s", type=float, default=CAPACITY_BUDGET_S, help="most seconds one setting's capacity search takes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--texts", default=str(WORKLOAD_FILE), help="one sentence per line")
    p.add_argument("--engine", default="embedded")
    p.add_argument("--model")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-wait-ms", type=float, default=15.0)
    p.add_argument("--out", default="results.csv", help="CSV path (a .json beside it too with --json)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--symbols", help="embedded engine only: precomputed symbol ids (JSON) instead of phkit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from app.engines import create_engine
    from app.service import TTSService
    from app.settings import BatchSettings, EngineSettings, ServeSettings
    from profiling.monitor import Monitor

    if args.symbols:
        from app.engines.embedded.engine import EmbeddedEngine
        from app.engines.embedded.frontend import precomputed_frontend

        engine = EmbeddedEngine(frontend=precomputed_frontend(args.symbols))
    else:
        engine = create_engine(EngineSettings(name=args.engine, model=args.model, device=args.device))
    engine.load(args.device, fp16=any(args.fp16))
    service = TTSService(engine, BatchSettings(fp16=False, max_batch_size=max(args.batch), max_wait_ms=args.max_wait_ms, cuda_graphs=False),
                         ServeSettings(queue_size=4096))
    service.start(warmup=True)
    monitor = Monitor(extra=service.stats).start()
    texts = load_workload(args.texts)
    slo = None if args.slo_p95 is None else default_slo_p95_s(engine.device) if args.slo_p95 == "auto" else args.slo_p95
    report = lambda i, n, label: print(f"[{i}/{n}] {label}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        grid = make_grid(args.fp16, args.batch, args.clear_cache, args.cuda_graphs, args.runtime)
        df = run_grid(service, monitor, grid, texts, args.concurrency, args.repeats, report, args.quality_texts,
                      slo_p95_s=slo, capacity_budget_s=args.capacity_budget_s)
    finally:
        monitor.close()
        service.close()
    df.to_csv(args.out, index=False)
    if args.json:
        df.to_json(args.out.rsplit(".", 1)[0] + ".json", orient="records", indent=1)
    shown = ["setting", "status", "p50_latency_s", "p95_latency_s", "throughput_audio_s_per_s", "rtf", "mcd_db",
             "frames_changed_share", "nonfinite_items", "mean_batch_size",
             "peak_torch_allocated_mib", "peak_torch_reserved_mib", "peak_vram_used_mib", "mean_gpu_util_pct", "peak_rss_mib"]
    stages = [f"share_{s}" for s in REQUEST_STAGES if df[f"share_{s}"].fillna(0).gt(0.005).any()]
    capacity = ["capacity_concurrency", "capacity_throughput_audio_s_per_s", "capacity_p95_s", "capacity_note"] if slo else []
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df[shown].to_string(index=False))
        print("\nShare of the requests' time by stage:\n" + df[["setting", *stages]].to_string(index=False))
        if capacity:
            print(f"\nCapacity under p95 <= {slo:g} s:\n" + df[["setting", *capacity]].to_string(index=False))
    print(f"\n{engine.name} on {engine.device} ({monitor.device_name}); {len(texts)} texts x {args.repeats}, concurrency {args.concurrency}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
