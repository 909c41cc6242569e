"""Engine benchmark: load time, per-sentence RTF at batch 1, throughput at batch 1/2/4/8, peak memory.

python -m profiling.bench.engine --device cpu --precision fp32 --batch 1,2,4,8
On a machine without phkit (a bare GPU box), pass --symbols FILE made here with --export-symbols FILE.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import pandas as pd

from profiling.loadgen import WORKLOAD_FILE, load_workload, workload_sentences


def export_symbols(path: str, texts: list[str]) -> None:
    """Symbol ids for the workload, the warm-up and the streaming paragraph, for a machine without phkit."""
    from app.engines.base import WARMUP_TEXT
    from app.engines.embedded.frontend import export_ids
    from profiling.bench.service import PARAGRAPH

    n = export_ids(path, workload_sentences(texts + ["预热", "你好", WARMUP_TEXT, PARAGRAPH]))
    print(f"wrote {n} sentences' symbol ids to {path}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", help="fp32,fp16")
    p.add_argument("--batch", default="1,2,4,8")
    p.add_argument("--texts", default=str(WORKLOAD_FILE))
    p.add_argument("--symbols", help="precomputed symbol ids (JSON) instead of phkit")
    p.add_argument("--export-symbols", metavar="FILE", help="write symbol ids for the workload and exit")
    p.add_argument("--out", help="CSV of the table")
    args = p.parse_args(argv)
    texts = load_workload(args.texts)
    if args.export_symbols:
        export_symbols(args.export_symbols, texts)
        return 0

    import torch

    from app.engines.base import Utterance
    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    frontend = precomputed_frontend(args.symbols) if args.symbols else None
    t0 = time.monotonic()
    engine = EmbeddedEngine(frontend=frontend)
    engine.load(args.device, fp16=False)
    load_s = time.monotonic() - t0
    sentences = workload_sentences(texts)
    utts = [Utterance(s, engine.default_speaker, seed=i) for i, s in enumerate(sentences)]
    rows = []
    for precision in args.precision.split(","):
        engine.set_precision(precision == "fp16")
        if precision == "fp16" and engine.precision == "fp32":
            rows.append({"precision": precision, "status": f"skipped: FP16 needs CUDA ({engine.device})"})
            continue
        for size in [int(b) for b in args.batch.split(",")]:
            engine.synthesize(utts[:size])  # warm-up at this shape
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            per_sentence_rtf, audio_s = [], 0.0
            t_start = time.monotonic()
            for i in range(0, len(utts), size):
                t = time.monotonic()
                out = engine.synthesize(utts[i : i + size])
                sync()
                seconds = sum(len(a) for a in out) / engine.sample_rate
                audio_s += seconds
                if size == 1:
                    per_sentence_rtf.append((time.monotonic() - t) / seconds)
            wall = time.monotonic() - t_start
            rows.append({
                "precision": engine.precision, "batch": size, "sentences": len(utts), "audio_s": round(audio_s, 2), "wall_s": round(wall, 3),
                "throughput_audio_s_per_s": audio_s / wall, "rtf": wall / audio_s,
                "rtf_b1_median": statistics.median(per_sentence_rtf) if per_sentence_rtf else float("nan"),
                "peak_rss_mib": peak_rss_mib(),
                "peak_cuda_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
                "status": "ok",
            })
    df = pd.DataFrame(rows)
    base = df.loc[(df.get("batch") == 1) & (df["status"] == "ok")].groupby("precision")["throughput_audio_s_per_s"].first() if "batch" in df else {}
    if "batch" in df:
        df["speedup_vs_b1"] = [r.throughput_audio_s_per_s / base.get(r.precision, float("nan")) if r.status == "ok" else float("nan") for r in df.itertuples()]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(df.to_string(index=False))
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\nembedded engine on {engine.device} ({name}); load {load_s:.2f} s; {len(utts)} sentences from {len(texts)} texts; torch {torch.__version__}")
    if args.out:
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
