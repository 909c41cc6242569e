"""Correctness checks that need a GPU, printed as PASS/FAIL lines (CPU-only tests cover the rest).

python -m profiling.bench.gpu_checks --symbols FILE   (on a CUDA machine; exits 1 if any check fails)
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from app.engines.embedded.frontend import precomputed_frontend
from profiling.loadgen import load_workload, workload_sentences

failures: list[str] = []
CAP_MIB = 300  # allocator headroom for the out-of-memory check


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)
    if not ok:
        failures.append(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--symbols", required=False)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    from app.engines.base import Utterance
    from app.engines.embedded.engine import EmbeddedEngine
    from app.service import TTSService
    from app.settings import BatchSettings, ServeSettings
    from profiling.monitor import Monitor

    engine = EmbeddedEngine(frontend=precomputed_frontend(args.symbols) if args.symbols else None)
    engine.load(args.device, fp16=False)
    sentences = workload_sentences(load_workload())[:8]
    utts = [Utterance(s, sp, seed=i) for i, (s, sp) in enumerate(zip(sentences, ["Aijia", "biaobei", "Xiaoxue", "Aina"] * 2))]

    # batched == one at a time, FP32 on the GPU
    alone = [engine.synthesize_mels([u])[0][0] for u in utts]
    batched = engine.synthesize_mels(utts)[0]
    frame_gap = max(abs(a.shape[1] - b.shape[1]) for a, b in zip(alone, batched))
    diff = max(float((a[:, :k] - b[:, :k]).abs().max()) for a, b in zip(alone, batched) for k in [min(a.shape[1], b.shape[1])])
    check("fp32 batch 8 == batch 1 (frames within 1, mel close)", frame_gap <= 1 and diff < 5e-2, f"frame gap {frame_gap}, max mel diff {diff:.2e}")

    # FP16 acoustic model: finite, same length within a few frames, mel close to FP32
    engine.set_precision(True)
    half = engine.synthesize_mels(utts)[0]
    rel_len = max(abs(a.shape[1] - h.shape[1]) / a.shape[1] for a, h in zip(batched, half))
    finite = all(torch.isfinite(h).all().item() for h in half)
    close = [float((a[:, :k] - h[:, :k]).abs().mean()) for a, h in zip(batched, half) for k in [min(a.shape[1], h.shape[1])]]
    check("fp16 mels finite, lengths within 10% of fp32", finite and rel_len < 0.1, f"max rel length diff {rel_len:.3f}, mean abs mel diff {max(close):.3f}")
    audio = engine.synthesize(utts)
    check("fp16 waveforms finite and not silent", all(np.isfinite(a).all() and np.sqrt(np.mean(a**2)) > 0.01 for a in audio))
    half_alone = [engine.synthesize_mels([u])[0][0] for u in utts[:4]]
    half_batched = engine.synthesize_mels(utts[:4])[0]
    gap16 = max(abs(a.shape[1] - b.shape[1]) for a, b in zip(half_alone, half_batched))
    check("fp16 batch 4 == batch 1 (frames within 2)", gap16 <= 2, f"frame gap {gap16}")

    # precision toggles in place (no reload): parameter storage dtype flips
    engine.set_precision(False)
    check("precision toggles in place", engine._acoustic.embedding.weight.dtype == torch.float32 and engine.precision == "fp32")

    # the service on the GPU: 32 concurrent callers, no cross-talk, batches formed, FP16 switched mid-load
    svc = TTSService(engine, BatchSettings(fp16=False, max_batch_size=8, max_wait_ms=30), ServeSettings()).start(warmup=True)
    jobs = [(s, sp) for s in workload_sentences(load_workload())[:16] for sp in ("Aijia", "Xiaoxue")]
    ref = {j: svc.submit(*j).audio for j in jobs}
    barrier = threading.Barrier(len(jobs))

    def call(job):
        barrier.wait()
        return job, svc.submit(*job)

    n_before = len(svc.batch_log)
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    sizes = [b.size for b in svc.batch_log[n_before:]]
    corr = min(np.corrcoef(ref[j][: min(len(ref[j]), len(r.audio))], r.audio[: min(len(ref[j]), len(r.audio))])[0, 1] for j, r in results)
    check("32 concurrent callers get their own audio", corr > 0.99 and sorted(j for j, _ in results) == sorted(jobs), f"min correlation {corr:.4f}")
    check("batches of more than one formed", max(sizes) > 1, f"sizes {sizes}")
    with ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(svc.submit, s, "Aijia") for s, _ in jobs[:16]]
        time.sleep(0.2)
        applied = svc.apply_settings(fp16=True, clear_cache=True)
        done = [f.result(120) for f in futs]
    check("settings change mid-load: all complete, fp16 in force", len(done) == 16 and applied.fp16 and engine.precision.startswith("fp16"))
    health = svc.health()
    check("health reports CUDA memory", health["memory"]["torch_allocated_mib"] is not None, str(health["memory"]))

    # out of memory: cap the allocator so a big batch cannot fit; the worker splits it and every item is answered
    torch.cuda.empty_cache()
    # headroom over what is already reserved: one long sentence needs ~150 MiB, a batch of 32 several times that
    cap_bytes = torch.cuda.memory_reserved() + CAP_MIB * 2**20
    torch.cuda.set_per_process_memory_fraction(cap_bytes / torch.cuda.get_device_properties(0).total_memory)
    failed_before = sum(not b.ok for b in svc.batch_log)
    svc.apply_settings(max_batch_size=32, clear_cache=True)
    long_texts = [s for s in workload_sentences(load_workload()) if len(s) > 15][:8] * 4
    outcomes = []
    with ThreadPoolExecutor(32) as pool:
        for f in [pool.submit(svc.submit, t, "Aijia", "neutral", i) for i, t in enumerate(long_texts)]:
            try:
                outcomes.append(("ok", f.result(300).audio.size))
            except Exception as exc:
                outcomes.append(("error", str(exc)[:120]))
    torch.cuda.set_per_process_memory_fraction(1.0)
    n_ok = sum(o[0] == "ok" for o in outcomes)
    errors = {o[1] for o in outcomes if o[0] == "error"}
    failed_batches = sum(not b.ok for b in svc.batch_log) - failed_before
    print("batch sizes that ran under the cap:", sorted({b.size for b in svc.batch_log if b.ok})[-5:])
    check("out of memory: every request answered (audio or its own clear error), worker alive",
          len(outcomes) == 32 and svc.submit("你好", "Aijia").audio.size > 0,
          f"cap {cap_bytes / 2**20:.0f} MiB: {n_ok} ok, {32 - n_ok} errors {sorted(errors)[:2]}, {failed_batches} batches hit OOM and were split")
    check("out of memory: splitting recovered every item that fits alone", n_ok == 32 and failed_batches > 0)
    svc.close()

    # NVML through the monitor
    mon = Monitor()
    row = mon.sample_once()
    check("NVML sampled", mon.gpu_available and row["vram_used_mib"] == row["vram_used_mib"],
          f"{mon.device_name}: used {row['vram_used_mib']:.0f}/{row['vram_total_mib']:.0f} MiB, util {row['gpu_util_pct']}, proc {row['proc_vram_mib']}, note {mon.note}")
    mon.close()
    print(f"\n{len(failures)} failed: {failures}" if failures else "\nall GPU checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
