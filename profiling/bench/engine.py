"""Engine benchmark (embedded): precision x decoder x batch size -> speed, memory, GPU utilisation and fidelity.

python -m profiling.bench.engine --device cuda --precision fp32,fp16,bf16,fp16/bf16 --decoder graphs,dynamic --batch 1,8,32
python -m profiling.bench.engine --device cpu --decoder dynamic,static,compiled --batch 1,8     (issue 11, item 6)
python -m profiling.bench.engine --device cpu --batch 1,8 --spans on,off --repeat 2   (the cost of the stage spans)
python -m profiling.bench.engine --device cpu --batch 1,8 --runtime torch,onnxruntime --repeat 3   (the vocoder on ONNX Runtime)

precision: ACOUSTIC[/VOCODER] (fp32, fp16, bf16; the vocoder defaults to the engine's HALF_PRECISION table).
decoder: dynamic (today's loop), graphs (static step replayed as CUDA graphs), static (the static step run eagerly),
compiled (static step through torch.compile; a CPU experiment). runtime: what runs the vocoder (torch, or onnxruntime:
exported once; the first switch's export time is the runtime_setup_s of its first row). spans: on records each call's
stages as the service's worker does (app.spans), off runs the engine bare; --repeat interleaves the cells that many
times. Every row also says how far its audio is from the
FP32 dynamic reference of the same sentences and seeds (MCD dB, share of items whose frame count changed,
non-finite items), so the fastest precision that stays right can be chosen per module.
On a machine without phkit (a bare GPU box), pass --symbols FILE made here with --export-symbols FILE.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time

import pandas as pd

from profiling.loadgen import WORKLOAD_FILE, load_workload, workload_sentences

DECODERS = ("dynamic", "graphs", "static", "compiled")


def export_symbols(path: str, texts: list[str]) -> None:
    """Symbol ids for the workload, the warm-up and the streaming paragraph, for a machine without phkit."""
    from app.engines.base import WARMUP_TEXT
    from app.engines.embedded.frontend import export_ids
    from profiling.bench.service import PARAGRAPH

    n = export_ids(path, workload_sentences(texts + ["预热", "你好", WARMUP_TEXT, PARAGRAPH]))
    print(f"wrote {n} sentences' symbol ids to {path}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_decoder(engine, decoder: str) -> tuple[bool, float, str]:
    """Put a decoder in force; returns (ok, seconds it took: capture or build, what is in force or why not)."""
    t0 = time.monotonic()
    engine.set_cuda_graphs(False)
    engine.set_static_decoding(False)
    if decoder == "graphs":
        ok = engine.set_cuda_graphs(True)
        if ok:
            return True, time.monotonic() - t0, engine.cuda_graphs_detail
        verdict = engine.gpu_self_check["graphs"]
        if verdict["status"] == "failed" and not verdict["detail"].startswith("capture raised"):
            # The app would decode with the dynamic loop now. The table still measures the captured graphs, unchecked,
            # so their speed and their quality columns (against the FP32 dynamic reference) show what was rejected.
            engine.set_static_decoding(True)
            return True, time.monotonic() - t0, f"UNCHECKED graphs: the self-check failed ({verdict['detail']})"
        return False, time.monotonic() - t0, "; ".join(engine.notes)
    if decoder in ("static", "compiled"):
        engine.set_static_decoding(True, compile_step=decoder == "compiled")
    return True, time.monotonic() - t0, decoder


def self_check_summary(engine) -> str:
    """The engine's self-check verdicts in one cell, e.g. "graphs passed (3.1e-03); acoustic passed; vocoder skipped"."""
    report = engine.gpu_self_check
    parts = [("graphs", report["graphs"])] + list(report["fp16"].items())
    return "; ".join(f"{name} {e['status']}" + (f" ({e['difference']:.1e})" if e["difference"] is not None else "")
                     for name, e in parts)


def set_precision(engine, spec: str) -> str:
    """"fp32" or "ACOUSTIC[/VOCODER]"; returns the precision in force."""
    if spec == "fp32":
        return engine.set_precision(False)
    from app.engines.embedded.engine import HALF_PRECISION

    acoustic, _, vocoder = spec.partition("/")
    engine.set_half_precision(acoustic, vocoder or HALF_PRECISION["vocoder"])
    return engine.set_precision(True)


def run_cell(engine, utts, size: int, monitor, reference, spans: bool = False) -> dict:
    """Warm up at this shape, then time the whole workload in batches of `size`; one flat row.

    spans: record each engine call's stages (app.spans) as the service's batch worker does."""
    import torch

    from app.spans import SpanRing
    from profiling.quality import quality_summary

    ring = SpanRing()

    cuda = engine.device.startswith("cuda")
    engine.synthesize(utts[:size])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    per_sentence_rtf, waves = [], []
    t_wall, t_start = time.time(), time.monotonic()
    for i in range(0, len(utts), size):
        t = time.monotonic()
        with ring.batch(i, size, engine.device) if spans else contextlib.nullcontext():
            out = engine.synthesize(utts[i : i + size])  # returns host arrays: synchronised
        waves += out
        if size == 1:
            per_sentence_rtf.append((time.monotonic() - t) / (len(out[0]) / engine.sample_rate))
    wall = time.monotonic() - t_start
    audio_s = sum(len(a) for a in waves) / engine.sample_rate
    usage = monitor.summary(t_wall, time.time()) if monitor is not None else {}
    row = {
        "batch": size, "sentences": len(utts), "audio_s": round(audio_s, 2), "wall_s": round(wall, 3),
        "throughput_audio_s_per_s": audio_s / wall, "rtf": wall / audio_s,
        "rtf_b1_median": statistics.median(per_sentence_rtf) if per_sentence_rtf else float("nan"),
        "peak_cuda_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "peak_vram_used_mib": usage.get("peak_vram_used_mib", float("nan")),
        "mean_gpu_util_pct": usage.get("mean_gpu_util_pct", float("nan")),
        "peak_rss_mib": peak_rss_mib(),
    }
    if reference is not None:
        row.update(quality_summary(reference, waves, engine.sample_rate))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", help="comma list of fp32 or ACOUSTIC[/VOCODER], e.g. fp32,fp16,bf16/bf16")
    p.add_argument("--decoder", default="dynamic", help=f"comma list of {', '.join(DECODERS)}")
    p.add_argument("--batch", default="1,2,4,8")
    p.add_argument("--spans", default="off", help="comma list of on, off: record the stage spans around each call")
    p.add_argument("--runtime", default="torch", help="comma list of torch, onnxruntime: what runs the vocoder")
    p.add_argument("--repeat", type=int, default=1, help="run every cell this many times, interleaved")
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    p.add_argument("--speaker", help="voice for every sentence (default: the engine's default voice)")
    p.add_argument("--symbols", help="precomputed symbol ids (JSON) instead of phkit")
    p.add_argument("--export-symbols", metavar="FILE", help="write symbol ids for the workload and exit")
    p.add_argument("--no-quality", action="store_true", help="skip the FP32 dynamic reference and the fidelity columns")
    p.add_argument("--out", help="CSV of the table")
    args = p.parse_args(argv)
    texts = load_workload(args.texts)
    if args.export_symbols:
        export_symbols(args.export_symbols, texts)
        return 0
    decoders = args.decoder.split(",")
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        p.error(f"--decoder {','.join(unknown)!r}: choose from {', '.join(DECODERS)}")

    import torch

    from app.engines.base import Utterance
    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend
    from profiling.monitor import Monitor

    frontend = precomputed_frontend(args.symbols) if args.symbols else None
    t0 = time.monotonic()
    engine = EmbeddedEngine(frontend=frontend)
    engine.load(args.device, fp16=False)
    load_s = time.monotonic() - t0
    sentences = workload_sentences(texts)
    utts = [Utterance(s, args.speaker or engine.default_speaker, seed=i) for i, s in enumerate(sentences)]
    monitor = Monitor(interval_s=0.1).start() if engine.device.startswith("cuda") else None
    reference = None if args.no_quality else engine.synthesize(utts)  # FP32, dynamic loop
    rows = []

    def record(row: dict) -> None:  # each row reaches the CSV at once: a run cut off keeps what it measured
        rows.append(row)
        if args.out:
            pd.DataFrame(rows).to_csv(args.out, index=False)

    try:
        for spec in args.precision.split(","):
            try:
                precision = set_precision(engine, spec)
            except Exception as exc:  # one GPU run measures everything: a precision that fails is a row, not a crash
                record({"precision": spec, "status": f"error: {type(exc).__name__}: {str(exc)[:120]}"})
                continue
            if spec != "fp32" and not engine.fp16:
                record({"precision": spec, "status": f"skipped: {spec} needs CUDA ({engine.device})"})
                continue
            for decoder in decoders:
                ok, setup_s, detail = set_decoder(engine, decoder)
                if not ok:
                    record({"asked": spec, "precision": precision, "decoder": decoder, "status": f"skipped: {detail}",
                            "self_check": self_check_summary(engine)})
                    continue
                for size, spans, runtime, rep in [(int(b), s.strip() == "on", rt.strip(), r) for r in range(args.repeat)
                                                  for b in args.batch.split(",") for s in args.spans.split(",")
                                                  for rt in args.runtime.split(",")]:
                    t_rt = time.monotonic()
                    if engine.set_runtime(runtime) != runtime:
                        record({"asked": spec, "precision": precision, "decoder": decoder, "batch": size, "runtime": runtime,
                                "status": "skipped: " + "; ".join(n for n in engine.notes if "ONNX" in n)})
                        continue
                    runtime_s = time.monotonic() - t_rt
                    try:
                        row = {"asked": spec, "precision": precision, "decoder": decoder, "spans": spans, "repeat": rep,
                               "runtime": runtime, **run_cell(engine, utts, size, monitor, reference, spans)}
                    except Exception as exc:
                        record({"asked": spec, "precision": precision, "decoder": decoder, "batch": size,
                                "status": f"error: {type(exc).__name__}: {str(exc)[:120]}"})
                        continue
                    row.update(setup_s=round(setup_s, 2), runtime_setup_s=round(runtime_s, 2), detail=detail,
                               runtime_detail=engine.runtime_detail, self_check=self_check_summary(engine), status="ok")
                    record(row)
                    print(f"{precision} {decoder} batch {size} spans {'on' if spans else 'off'} {runtime}: "
                          f"{row['throughput_audio_s_per_s']:.1f} audio s/s", file=sys.stderr, flush=True)
    finally:
        if monitor is not None:
            monitor.close()
    df = pd.DataFrame(rows)
    if "batch" in df:
        ok_rows = df[df["status"] == "ok"]
        base = ok_rows[ok_rows["batch"] == 1].groupby(["asked", "decoder", "runtime"])["throughput_audio_s_per_s"].first()
        df["speedup_vs_b1"] = [r.throughput_audio_s_per_s / base.get((r.asked, r.decoder, r.runtime), float("nan"))
                               if r.status == "ok" else float("nan") for r in df.itertuples()]
    shown = [c for c in ["asked", "precision", "decoder", "batch", "spans", "runtime", "repeat", "throughput_audio_s_per_s", "rtf", "rtf_b1_median", "speedup_vs_b1",
                         "peak_cuda_allocated_mib", "peak_vram_used_mib", "mean_gpu_util_pct", "mcd_db", "frames_changed_share",
                         "nonfinite_items", "setup_s", "runtime_setup_s", "status"] if c in df]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(df[shown].to_string(index=False))
        ok_rows = df[df["status"] == "ok"] if "status" in df else df
        if "spans" in ok_rows and ok_rows["spans"].nunique() > 1:  # the spans' cost: on / off, medians over repeats
            medians = ok_rows.groupby(["precision", "decoder", "batch", "spans"])["throughput_audio_s_per_s"].median().unstack()
            medians["on_over_off"] = medians[True] / medians[False]
            print("\nThroughput (audio s/s), median over repeats, spans off / on:\n" + medians.to_string())
        if "runtime" in ok_rows and ok_rows["runtime"].nunique() > 1:  # the vocoder's runtime: medians over repeats
            medians = ok_rows.groupby(["precision", "decoder", "batch", "runtime"])["throughput_audio_s_per_s"].median().unstack()
            medians["onnxruntime_over_torch"] = medians["onnxruntime"] / medians["torch"]
            print("\nThroughput (audio s/s), median over repeats, by vocoder runtime:\n" + medians.to_string())
        exported = sorted({r["runtime_detail"] for r in rows if r.get("runtime_detail")})
        print("".join(f"\nONNX Runtime: {d}" for d in exported))
    name = torch.cuda.get_device_name() if engine.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    details = sorted({r["detail"] for r in rows if r.get("decoder") == "graphs" and "detail" in r})
    print(f"\nembedded engine on {engine.device} ({name}); load {load_s:.2f} s; {len(utts)} sentences from {len(texts)} texts; "
          f"torch {torch.__version__}" + "".join(f"\ngraphs: {d}" for d in details))
    if args.out:
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
