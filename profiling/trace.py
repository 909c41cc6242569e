"""Trace on demand: torch.profiler over the next N batches of the resident service, attached by its worker.

The profiler is started by the batch worker between two batches (so no batch is half traced), the stage spans open
`record_function` ranges while it runs (app.spans), and the worker stops it after the Nth batch or when the
recording times out. One recording at a time; when none runs, the profiler is not attached and costs nothing.

The result: the top operators per stage, the launch-bound figures (profiling.trace_report) and a Chrome/Perfetto
trace file (.json.gz, at most MAX_FILE_EVENTS events) with the stages as named ranges.

CLI (no gradio needed: the GPU suite runs it on a bare CUDA box), on an in-process service running the workload:
  python -m profiling.trace --device cpu --batch 1,8 --batches 5 --out trace.csv
  python -m profiling.trace --device cuda --symbols .gpu/symbols.json --precision fp32,fp16 --graphs on,off --out trace.csv
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from app import spans
from app.spans import BATCH_STAGES, BatchSpans
from profiling import trace_report

MAX_BATCHES = 20  # most batches one recording covers (the trace grows with every decoder step)
DEFAULT_BATCHES = 5
DEFAULT_TIMEOUT_S = 120.0  # a recording ends by itself after this long, with whatever batches it saw
MAX_FILE_EVENTS = 300_000  # events in the downloadable file (about 10-20 MB gzipped); the analysis sees them all
KEEP_FILES = 5  # traces kept in the trace folder (older ones are deleted)
TRACE_DIR = Path(tempfile.gettempdir()) / "tts-traces"


class TraceBusyError(RuntimeError):
    """A recording is already running, or the worker could not be reached between batches in time."""


def check_batches(batches: int) -> int:
    """N for a recording, checked at the edge (ValueError names the value)."""
    if isinstance(batches, float) and batches.is_integer():
        batches = int(batches)
    if not isinstance(batches, int) or not 1 <= batches <= MAX_BATCHES:
        raise ValueError(f"batches={batches!r}: a trace covers 1 to {MAX_BATCHES} batches")
    return batches


@dataclass
class TraceResult:
    """One recording, analysed."""

    records: list[BatchSpans]  # the traced batches' stage spans
    ops: pd.DataFrame  # top operators per stage (trace_report.OPS_COLUMNS)
    figures: dict[str, float]  # launch-bound figures (trace_report.launch_figures)
    path: str | None  # the .json.gz trace (None when no batch was traced)
    device: str
    wall_s: float  # from the request to the profiler's stop
    dropped_events: int = 0  # events left out of the file to bound it (the analysis saw them)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Markdown for the page: what was traced and the launch-bound figures."""
        if not self.records:
            return "; ".join(self.notes)
        f = self.figures
        line = (f"**Traced {len(self.records)} batch(es)** ({f['items_traced']} items, {f['decoder_steps']} decoder steps, "
                f"{f['decoder_frames']} frames) on `{self.device}` in {self.wall_s:.1f} s. Decoder: "
                f"**{f['host_ops_per_frame']:.1f} host op calls per decoded frame** ({f['host_ops_per_step']:.0f} per step)")
        if f["kernels_per_frame"] == f["kernels_per_frame"]:  # CUDA
            line += (f", **{f['launches_per_frame']:.1f} kernel launches** and {f['kernels_per_frame']:.1f} kernels run per "
                     f"frame ({f['launches_per_step']:.0f} / {f['kernels_per_step']:.0f} per step; {f['graph_launches']:.0f} "
                     f"graph replays); the GPU ran a kernel **{100 * f['gpu_busy_share']:.0f}%** of the traced batches' wall time")
        else:
            line += "; no GPU kernels (CPU run)"
        return line + "." + "".join(f"  \n_{n}_" for n in self.notes)


class _Session:
    """One recording's state; attach, batch counting and detach all run on the batch worker thread."""

    def __init__(self, service, batches: int) -> None:
        self.service, self.batches = service, batches
        self.cuda = service.engine.device.startswith("cuda")
        self.records: list[BatchSpans] = []
        self.done = threading.Event()
        self.prof = None  # set once the profiler runs

    def attach(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        prof = profile(activities=activities)
        prof.start()
        self.prof = prof
        spans.set_trace_ranges(True)
        self.service.spans.watch(self.on_batch)

    def on_batch(self, record: BatchSpans) -> None:
        if len(self.records) >= self.batches:
            return
        self.records.append(record)
        if len(self.records) == self.batches:  # no range for later batches; the worker stops it once this one is answered
            spans.set_trace_ranges(False)
            self.service.between_batches(self.detach)

    def detach(self) -> None:
        if self.prof is None or self.done.is_set():
            return
        self.service.spans.unwatch(self.on_batch)
        spans.set_trace_ranges(False)
        self.prof.stop()
        self.done.set()


class TraceRecorder:
    """Records traces of one service, one at a time."""

    def __init__(self, service, out_dir: str | Path = TRACE_DIR) -> None:
        self.service = service
        self.out_dir = Path(out_dir)
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._since = 0.0

    @property
    def busy(self) -> bool:
        """Whether a recording is running now."""
        return self._lock.locked()

    def available(self) -> str | None:
        """Why this service cannot be traced (None: it can)."""
        if not getattr(self.service, "owns_engine", False) or not hasattr(self.service, "between_batches"):
            return "tracing needs the engine in this process: with --ray-replicas each replica has its own (not traced here)"
        return None

    def record(self, batches: int = DEFAULT_BATCHES, timeout_s: float = DEFAULT_TIMEOUT_S) -> TraceResult:
        """Trace the next `batches` batches (or what ran within timeout_s); blocks until done and analysed.

        Raises ValueError for a bad N or an untraceable service, TraceBusyError while another recording runs.
        """
        batches = check_batches(batches)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive")
        why = self.available()
        if why:
            raise ValueError(why)
        if not self._lock.acquire(blocking=False):
            session = self._session
            seen = f", {len(session.records)} of {session.batches} batches so far" if session is not None else ""
            raise TraceBusyError(f"a trace is already being recorded (started {time.monotonic() - self._since:.0f} s "
                                 f"ago{seen}); wait for it to finish, then record again")
        try:
            self._since = t0 = time.monotonic()
            self._session = session = _Session(self.service, batches)
            attached = self.service.between_batches(session.attach)
            try:
                attached.result(timeout_s)  # raises what attaching raised
                finished = session.done.wait(max(0.0, timeout_s - (time.monotonic() - t0)))
            except TimeoutError:  # the worker is still in a long batch: it attaches after it
                finished = False
            if not finished:  # ends by itself: the worker detaches (worker actions run in order, so after attaching)
                try:
                    self.service.between_batches(session.detach).result(timeout_s)
                except TimeoutError:
                    raise TraceBusyError(f"the batch worker has been in one batch for over {timeout_s:.0f} s; the "
                                         "profiler is detached as soon as that batch ends, with nothing recorded") from None
            return self._analyse(session, time.monotonic() - t0, timeout_s)
        finally:
            self._session = None
            spans.set_trace_ranges(False)
            self._lock.release()

    def _analyse(self, session: _Session, wall_s: float, timeout_s: float) -> TraceResult:
        device = self.service.engine.device
        if not session.records:
            note = (f"no batch ran in {timeout_s:.0f} s of recording: send requests while a trace records "
                    "(it covers the next batches the service runs)")
            return TraceResult([], pd.DataFrame(columns=trace_report.OPS_COLUMNS), {}, None, device, wall_s, notes=[note])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        session.prof.export_chrome_trace(str(raw))
        with open(raw, encoding="utf8") as f:
            trace = json.load(f)
        raw.unlink()
        events = trace_report.complete_events(trace)
        trace_report.attribute(events)
        ops = trace_report.ops_table(events)
        figures = trace_report.launch_figures(events, session.records)
        bounded, dropped = trace_report.bounded_events(trace, MAX_FILE_EVENTS)
        path = raw.with_suffix(".json.gz")
        with gzip.open(path, "wt", encoding="utf8", compresslevel=6) as f:
            json.dump(bounded, f)
        self._prune()
        notes = []
        if len(session.records) < session.batches:
            notes.append(f"ended by its {timeout_s:.0f} s timeout after {len(session.records)} of {session.batches} batches")
        if dropped:
            notes.append(f"the file keeps the first {MAX_FILE_EVENTS} events; {dropped} later ones were left out (the figures count them all)")
        return TraceResult(list(session.records), ops, figures, str(path), device, wall_s, dropped, notes)

    def _prune(self) -> None:
        files = sorted(self.out_dir.glob("trace-*.json.gz"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP_FILES]:
            old.unlink(missing_ok=True)


def stage_split(records: list[BatchSpans]) -> dict[str, float]:
    """Each in-batch stage's share of these batches' wall time (and OTHER)."""
    totals: dict[str, float] = {}
    for record in records:
        for stage, seconds in record.totals().items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    wall = sum(r.wall_s for r in records)
    return {stage: seconds / wall for stage, seconds in totals.items()} if wall else {}


# --- CLI ---------------------------------------------------------------------------------------------------------------
def _feed(service, texts: list[str], concurrency: int, stop: threading.Event) -> list[threading.Thread]:
    """Closed-loop clients sending the texts in turn until stop is set."""
    speaker = service.engine.default_speaker

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                service.submit(texts[i % len(texts)], speaker)
            except Exception as exc:  # a failed request is a row note, not a crash of the measurement
                logging.warning("request failed while tracing: %s", exc)
            i += concurrency

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def _measure(service, recorder: TraceRecorder, texts: list[str], concurrency: int, batches: int, traced: bool,
             timeout_s: float) -> tuple[list[BatchSpans], TraceResult | None]:
    """The next `batches` batches under load, traced or not."""
    stop = threading.Event()
    seen = len(service.span_log)
    threads = _feed(service, texts, concurrency, stop)
    try:
        if traced:
            result = recorder.record(batches, timeout_s)
            return result.records, result
        deadline = time.monotonic() + timeout_s
        while len(service.span_log) < seen + batches and time.monotonic() < deadline:
            time.sleep(0.05)
        return service.span_log[seen : seen + batches], None
    finally:
        stop.set()
        for t in threads:
            t.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, fp16 (fp16 needs CUDA)")
    p.add_argument("--graphs", default="off", help="comma list of on, off (on needs CUDA)")
    p.add_argument("--batch", default="8", help="max batch sizes, e.g. 1,8; the load has as many clients")
    p.add_argument("--batches", type=int, default=DEFAULT_BATCHES, help=f"batches per trace (1-{MAX_BATCHES})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds a recording may take")
    p.add_argument("--texts", help="one text per line (default: the shipped workload)")
    p.add_argument("--symbols", help="precomputed symbol ids (JSON) instead of phkit (a GPU box without it)")
    p.add_argument("--trace-dir", default=str(TRACE_DIR), help="where the .json.gz traces go")
    p.add_argument("--no-warmup", action="store_true", help="skip warming every voice (a quick smoke run)")
    p.add_argument("--out", help="CSV of the launch-bound figures, one row per setting")
    p.add_argument("--ops-out", help="CSV of the top operators by stage, per setting (also printed)")
    args = p.parse_args(argv)
    check_batches(args.batches)
    logging.basicConfig(level=logging.WARNING)

    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings
    from profiling.loadgen import load_workload

    texts = load_workload(args.texts) if args.texts else load_workload()
    engine = EmbeddedEngine(frontend=precomputed_frontend(args.symbols) if args.symbols else None)
    engine.load(args.device, fp16=False)
    sizes = [int(b) for b in args.batch.split(",")]
    service = TTSService(engine, BatchSettings(fp16=False, max_batch_size=max(sizes), cuda_graphs=False),
                         ServeSettings(queue_size=4096)).start(warmup=not args.no_warmup)
    recorder = TraceRecorder(service, args.trace_dir)
    rows, ops = [], []
    try:
        for precision in args.precision.split(","):
            for graphs in [g.strip() == "on" for g in args.graphs.split(",")]:
                for size in sizes:
                    row = {"device": engine.device, "precision": precision, "cuda_graphs": graphs, "max_batch": size}
                    if (precision == "fp16" and not engine.fp16_supported) or (graphs and not engine.cuda_graphs_supported):
                        rows.append({**row, "status": f"skipped: needs CUDA ({engine.device})"})
                        continue
                    applied = service.apply_settings(fp16=precision == "fp16", max_batch_size=size, cuda_graphs=graphs)
                    row.update(precision=engine.precision, cuda_graphs=applied.cuda_graphs)
                    plain, _ = _measure(service, recorder, texts, size, args.batches, False, args.timeout)
                    traced, result = _measure(service, recorder, texts, size, args.batches, True, args.timeout)
                    rate = lambda rs: sum(r.frames for r in rs) / sum(r.wall_s for r in rs) if rs else float("nan")  # noqa: E731
                    row.update(result.figures, trace_overhead_x=rate(plain) / rate(traced) if traced else float("nan"),
                               dropped_events=result.dropped_events, trace=result.path, status="; ".join(result.notes) or "ok")
                    row.update({f"share_{k}": v for k, v in stage_split(plain).items()})
                    rows.append(row)
                    ops.append(result.ops.assign(precision=row["precision"], cuda_graphs=row["cuda_graphs"], max_batch=size))
                    print(f"{row['precision']} graphs {row['cuda_graphs']} batch {size}: {result.summary()}", file=sys.stderr, flush=True)
    finally:
        service.close()
    df = pd.DataFrame(rows)
    shown = [c for c in ["precision", "cuda_graphs", "max_batch", "batches_traced", "decoder_frames", "host_ops_per_frame",
                         "host_ops_per_step", "launches_per_frame", "kernels_per_frame", "kernels_per_step", "gpu_busy_share",
                         "trace_overhead_x", *[f"share_{s}" for s in BATCH_STAGES], "status"] if c in df]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(df[shown].to_string(index=False))
        for table in ops:
            print(f"\ntop operators, {table['precision'].iloc[0] if len(table) else ''} graphs "
                  f"{table['cuda_graphs'].iloc[0] if len(table) else ''} batch {table['max_batch'].iloc[0] if len(table) else ''}:")
            print(table.groupby("stage", sort=False).head(4)[trace_report.OPS_COLUMNS].to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)
    if args.ops_out and ops:
        pd.concat(ops).to_csv(args.ops_out, index=False)
    print(f"\nembedded engine on {engine.device}; traces in {args.trace_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
