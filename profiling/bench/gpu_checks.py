"""Correctness checks that need a GPU, printed as PASS/FAIL/SKIP/NOTE lines (CPU-only tests cover the rest).

python -m profiling.bench.gpu_checks --symbols FILE --sambert-symbols FILE --out correctness.csv   (exits 1 on a FAIL)

First the start-up self-check as a user's start-up runs it (profiling/bench/gpu_selfcheck.py: time and verdicts),
then one function per check; a check that raises is a FAIL with its exception, and the others still run. Every line
is also a row of the --out CSV, written as it comes, so a run cut off keeps what it checked.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from app.engines.embedded.frontend import precomputed_frontend
from profiling.loadgen import load_workload, workload_sentences

CAP_MIB = 300  # allocator headroom for the out-of-memory split check
RESULTS = ("PASS", "FAIL", "SKIP", "NOTE")  # NOTE: a finding that fails nothing (a table on trial turned off)
failures: list[str] = []
rows: list[dict] = []
out_csv: str | None = None


def check(name: str, ok: bool | str, detail: str = "", **figures) -> None:
    """Print and record one check: ok is a bool (PASS/FAIL) or one of RESULTS; figures become CSV columns."""
    result = ok if isinstance(ok, str) else ("PASS" if ok else "FAIL")
    assert result in RESULTS, result
    print(f"{result}  {name}  {detail}", flush=True)
    if result == "FAIL":
        failures.append(name)
    rows.append({"check": name, "result": result, "detail": detail, **figures})
    if out_csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(out_csv, index=False)


@dataclass
class Context:
    """What the checks share: the resident engine and the workload."""

    engine: object  # EmbeddedEngine on CUDA
    utts: list  # 8 utterances, mixed speakers and lengths
    sentences: list[str]  # the workload's normalised sentences

    def jobs(self, n: int = 16) -> list[tuple[str, str]]:
        return [(s, sp) for s in self.sentences[:n] for sp in ("Aijia", "Xiaoxue")]


def max_mel_gap(a: list, b: list) -> tuple[int, float]:
    """Largest frame-count difference and largest mel difference over the common frames of paired items."""
    frames = max(abs(x.shape[1] - y.shape[1]) for x, y in zip(a, b))
    diff = max(float((x[:, :k] - y[:, :k]).abs().max()) for x, y in zip(a, b) for k in [min(x.shape[1], y.shape[1])])
    return frames, diff


def correlation(ref: np.ndarray, out: np.ndarray) -> float:
    k = min(len(ref), len(out))
    return float(np.corrcoef(ref[:k], out[:k])[0, 1])


# --- the engine alone ----------------------------------------------------------------------------------------------
def check_batching_fp32(ctx: Context) -> None:
    engine = ctx.engine
    alone = [engine.synthesize_mels([u])[0][0] for u in ctx.utts]
    frames, diff = max_mel_gap(alone, engine.synthesize_mels(ctx.utts)[0])
    check("fp32 batch 8 == batch 1 (frames within 1, mel close)", frames <= 1 and diff < 5e-2, f"frame gap {frames}, max mel diff {diff:.2e}")


def check_fp16(ctx: Context) -> None:
    engine = ctx.engine
    fp32 = engine.synthesize_mels(ctx.utts)[0]
    engine.set_precision(True)
    half = engine.synthesize_mels(ctx.utts)[0]
    rel_len = max(abs(a.shape[1] - h.shape[1]) / a.shape[1] for a, h in zip(fp32, half))
    finite = all(torch.isfinite(h).all().item() for h in half)
    check("fp16 mels finite, lengths within 10% of fp32", finite and rel_len < 0.1, f"max rel length diff {rel_len:.3f}")
    audio = engine.synthesize(ctx.utts)
    check("fp16 waveforms finite and not silent", all(np.isfinite(a).all() and np.sqrt(np.mean(a**2)) > 0.01 for a in audio))
    frames, _ = max_mel_gap([engine.synthesize_mels([u])[0][0] for u in ctx.utts[:4]], engine.synthesize_mels(ctx.utts[:4])[0])
    check("fp16 batch 4 == batch 1 (frames within 2)", frames <= 2, f"frame gap {frames}")
    engine.set_precision(False)
    check("precision toggles in place", engine._acoustic.embedding.weight.dtype == torch.float32 and engine.precision == "fp32")


def check_graphs_equal_dynamic(ctx: Context) -> None:
    """Graph replay == the dynamic loop (fp32: same frames, mel close; fp16: frames within 2) and == eager static."""
    from app.engines import cuda_graphs

    engine = ctx.engine
    for fp16 in (False, True):
        engine.set_precision(fp16)
        dynamic, dyn_stopped = engine.synthesize_mels(ctx.utts)
        t0 = time.monotonic()
        ok = engine.set_cuda_graphs(True)
        capture_s = time.monotonic() - t0
        graphed, stopped = engine.synthesize_mels(ctx.utts)
        frames, diff = max_mel_gap(dynamic, graphed)
        name = "fp16" if fp16 else "fp32"
        bound = (0, 5e-2) if not fp16 else (2, float("inf"))
        check(f"{name} CUDA graphs == dynamic loop (frames within {bound[0]})", ok and frames <= bound[0] and diff < bound[1],
              f"{engine.cuda_graphs_detail}, captured in {capture_s:.2f} s; frame gap {frames}, max mel diff {diff:.2e}")
        original = cuda_graphs.capture_possible
        cuda_graphs.capture_possible = lambda device: False  # the same static chunk, run eagerly on the GPU
        try:
            engine.set_static_decoding(True)
            eager, _ = engine.synthesize_mels(ctx.utts)
        finally:
            cuda_graphs.capture_possible = original
        frames, diff = max_mel_gap(eager, graphed)
        check(f"{name} graph replay == the same static step run eagerly", frames == 0 and diff < 1e-3, f"max mel diff {diff:.2e}")
        engine.set_cuda_graphs(False)
        check(f"{name} stop gates agree (graphs vs dynamic)", stopped == dyn_stopped, f"{stopped} vs {dyn_stopped}")
    engine.set_precision(False)


def check_graph_capture_oom_falls_back(ctx: Context) -> None:
    engine = ctx.engine
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_reserved() + 4 * 2**20  # no room for the static buffers
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    try:
        in_force = engine.set_cuda_graphs(True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    note = "; ".join(engine.notes)
    audio = engine.synthesize(ctx.utts[:2])
    check("capture out of memory: dynamic loop in force, visible note, still answering",
          not in_force and "CUDA graph capture failed" in note and all(a.size > 0 for a in audio), note[:160])
    check("capture succeeds again once memory is back", engine.set_cuda_graphs(True) and not any("graph" in n for n in engine.notes),
          engine.cuda_graphs_detail)
    engine.set_cuda_graphs(False)


# --- the service ---------------------------------------------------------------------------------------------------
def check_concurrent_callers(ctx: Context, svc, graphs: bool) -> None:
    svc.apply_settings(cuda_graphs=graphs, fp16=False, max_batch_size=8)
    jobs = ctx.jobs()
    ref = {j: svc.submit(*j).audio for j in jobs}
    barrier = threading.Barrier(len(jobs))

    def call(job):
        barrier.wait()
        return job, svc.submit(*job)

    n_before = len(svc.batch_log)
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    sizes = [b.size for b in svc.batch_log[n_before:]]
    corr = min(correlation(ref[j], r.audio) for j, r in results)
    label = "graphs on" if graphs else "graphs off"
    check(f"32 concurrent callers get their own audio ({label})", corr > 0.99 and sorted(j for j, _ in results) == sorted(jobs),
          f"min correlation {corr:.4f}, in force: graphs {svc.settings.cuda_graphs}")
    check(f"batches of more than one formed ({label})", max(sizes) > 1, f"sizes {sizes}")


def check_switches_mid_load(ctx: Context, svc) -> None:
    """FP16 and CUDA graphs switched while 16 requests are in flight: every one completes with its own audio."""
    jobs = ctx.jobs(8)
    svc.apply_settings(fp16=False, cuda_graphs=False)
    ref = {j: svc.submit(*j).audio for j in jobs}
    with ThreadPoolExecutor(16) as pool:
        futures = {pool.submit(svc.submit, *j): j for j in jobs}
        time.sleep(0.2)
        states = [svc.apply_settings(**change) for change in ({"cuda_graphs": True}, {"fp16": True}, {"cuda_graphs": False},
                                                              {"cuda_graphs": True, "clear_cache": True})]
        done = {futures[f]: f.result(120) for f in futures}
    # own audio: each answer is finite and as long as its own FP32 rendering (FP16 may move a few frames); the jobs'
    # sentences differ in length, so another caller's audio would not fit
    rel = max(abs(len(r.audio) - len(ref[j])) / len(ref[j]) for j, r in done.items())
    finite = all(np.isfinite(r.audio).all() for r in done.values())
    final = states[-1]
    check("settings change mid-load (graphs, fp16): all complete with their own audio, fp16 + graphs in force",
          len(done) == 16 and finite and rel < 0.25 and final.fp16 and final.cuda_graphs and ctx.engine.precision.startswith("fp16"),
          f"max relative length change {rel:.3f}; in force {final}")
    health = svc.health()
    check("health says what is in force (graphs, their memory) and CUDA memory",
          health["cuda_graphs"] is True and "MiB" in (health["cuda_graphs_detail"] or "")
          and health["memory"]["torch_allocated_mib"] is not None, f"{health['cuda_graphs_detail']}; {health['memory']}")


def check_oom_split(ctx: Context, svc) -> None:
    """Cap the allocator so a big batch cannot fit; the worker splits it and every item is answered."""
    svc.apply_settings(cuda_graphs=False, fp16=False)
    torch.cuda.empty_cache()
    # headroom over what is already reserved: one long sentence needs ~150 MiB, a batch of 32 several times that
    cap_bytes = torch.cuda.memory_reserved() + CAP_MIB * 2**20
    torch.cuda.set_per_process_memory_fraction(cap_bytes / torch.cuda.get_device_properties(0).total_memory)
    failed_before = sum(not b.ok for b in svc.batch_log)
    svc.apply_settings(max_batch_size=32, clear_cache=True)
    long_texts = [s for s in ctx.sentences if len(s) > 15][:8] * 4
    outcomes = []
    try:
        with ThreadPoolExecutor(32) as pool:
            for f in [pool.submit(svc.submit, t, "Aijia", "neutral", i) for i, t in enumerate(long_texts)]:
                try:
                    outcomes.append(("ok", f.result(300).audio.size))
                except Exception as exc:
                    outcomes.append(("error", str(exc)[:120]))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    n_ok = sum(o[0] == "ok" for o in outcomes)
    errors = {o[1] for o in outcomes if o[0] == "error"}
    failed_batches = sum(not b.ok for b in svc.batch_log) - failed_before
    check("out of memory: every request answered (audio or its own clear error), worker alive",
          len(outcomes) == 32 and svc.submit("你好", "Aijia").audio.size > 0,
          f"cap {cap_bytes / 2**20:.0f} MiB: {n_ok} ok, {32 - n_ok} errors {sorted(errors)[:2]}, {failed_batches} batches split")
    check("out of memory: splitting recovered every item that fits alone", n_ok == 32 and failed_batches > 0)


# --- Sambert and NVML ----------------------------------------------------------------------------------------------
def check_sambert_graphs() -> None:
    """Random-weight folders (tiny and the real size): graphs == dynamic in FP32, frame counts kept in FP16."""
    from app.engines.sambert.folder import load_model_folder
    from app.engines.sambert.runtime import SambertVoice, SymbolItem
    from profiling.bench.sambert import sentence_symbols
    from tests.fixtures.sambert_writer import FolderSpec, write_model_folder

    rng = np.random.default_rng(5)
    items = [SymbolItem(sentence_symbols(rng, n), scale) for n, scale in ((3, 1.0), (40, 1.0), (25, 1.6), (60, 0.8), (12, 1.0))]
    for size in ("tiny", "real"):
        with tempfile.TemporaryDirectory() as tmp:
            files = load_model_folder(write_model_folder(tmp, FolderSpec(size=size))).voices["test_voice"]
        voice = SambertVoice(files, "cuda")
        for precision in ("fp32", "fp16"):
            voice.set_static_decoding(False)
            voice.set_dtypes(precision, precision)
            dynamic = voice.synthesize(items)
            voice.set_static_decoding(True)
            graphed = voice.synthesize(items)
            same_frames = all(a.mel.shape == b.mel.shape for a, b in zip(dynamic, graphed))
            diff = max(float(np.abs(a.mel - b.mel).max()) for a, b in zip(dynamic, graphed))
            finite = all(np.isfinite(b.waveform).all() for b in graphed)
            bound = 1e-3 if precision == "fp32" else 5e-2
            check(f"sambert {size} {precision}: CUDA graphs == dynamic (same frames, mel within {bound})",
                  voice.static.graphs.captured and same_frames and diff < bound and finite,
                  f"{voice.static.describe()}; max mel diff {diff:.2e}")
        del voice
        torch.cuda.empty_cache()


def check_nvml() -> None:
    from profiling.monitor import Monitor

    mon = Monitor()
    row = mon.sample_once()
    check("NVML sampled", mon.gpu_available and row["vram_used_mib"] == row["vram_used_mib"],
          f"{mon.device_name}: used {row['vram_used_mib']:.0f}/{row['vram_total_mib']:.0f} MiB, util {row['gpu_util_pct']}, "
          f"proc {row['proc_vram_mib']}, note {mon.note}")
    mon.close()


def guarded(name: str, fn, *args) -> None:
    """Run one check; an exception is that check's FAIL, never the end of the run."""
    try:
        fn(*args)
    except Exception as exc:
        traceback.print_exc()
        check(name, False, f"raised {type(exc).__name__}: {str(exc)[:200]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--symbols", required=False, help="phkit ids (gpu_prepare.sh) instead of phkit")
    p.add_argument("--sambert-symbols", help="Sambert frontend symbols (gpu_prepare.sh) instead of jieba/pypinyin")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", help="CSV of every check, rewritten after each")
    args = p.parse_args(argv)
    global out_csv
    out_csv = args.out
    from profiling.bench import gpu_selfcheck

    guarded("startup_embedded", gpu_selfcheck.startup_embedded, check, args.symbols, args.device)
    guarded("startup_sambert", gpu_selfcheck.startup_sambert, check, args.sambert_symbols, args.device)
    from app.engines.base import Utterance
    from app.engines.embedded.engine import EmbeddedEngine
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings

    engine = EmbeddedEngine(frontend=precomputed_frontend(args.symbols) if args.symbols else None)
    engine.load(args.device, fp16=False)
    sentences = workload_sentences(load_workload())
    speakers = ["Aijia", "biaobei", "Xiaoxue", "Aina"] * 2
    ctx = Context(engine, [Utterance(s, sp, seed=i) for i, (s, sp) in enumerate(zip(sentences[:8], speakers))], sentences)
    for fn in (check_batching_fp32, check_fp16, check_graphs_equal_dynamic, check_graph_capture_oom_falls_back):
        guarded(fn.__name__, fn, ctx)
    svc = TTSService(engine, BatchSettings(fp16=False, max_batch_size=8, max_wait_ms=30, cuda_graphs=True), ServeSettings()).start(warmup=True)
    try:
        for graphs in (True, False):
            guarded("check_concurrent_callers", check_concurrent_callers, ctx, svc, graphs)
        guarded("check_switches_mid_load", check_switches_mid_load, ctx, svc)
        guarded("check_oom_split", check_oom_split, ctx, svc)
    finally:
        svc.close()
    engine.unload()
    guarded("check_sambert_graphs", check_sambert_graphs)
    guarded("check_nvml", check_nvml)
    print(f"\n{len(failures)} failed: {failures}" if failures else "\nall GPU checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
