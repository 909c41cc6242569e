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

from profiling.loadgen import WORKLOAD_FILE, load_workload


def sentences_of(texts: list[str]) -> list[str]:
    """The normalised sentences the service would send to the engine for these texts."""
    from app import text as textproc

    return [s for t in texts for s in textproc.split_sentences(textproc.normalize(t))]


def precomputed_frontend(path: str):
    """A frontend reading symbol ids exported by --export-symbols (no phkit needed)."""
    table = json.loads(open(path, encoding="utf8").read())

    def frontend(text: str) -> list[int]:
        if text not in table:
            raise KeyError(f"{text!r} is not in {path}; export it with --export-symbols on a machine with phkit")
        return table[text]

    return frontend


def export_symbols(path: str, texts: list[str]) -> None:
    from app.engines.embedded.engine import _text_to_ids
    from app.service import WARMUP_TEXT

    extra = ["预热", "你好", WARMUP_TEXT, "这是一段用来测试流式合成的长文本。它有好几句话，每一句都不太长。第一句先出来，后面的句子再慢慢跟上。这样用户可以更早听到声音。"]
    wanted = sorted(set(sentences_of(texts + extra)) | {"预热"})
    json.dump({s: list(_text_to_ids(s)) for s in wanted}, open(path, "w", encoding="utf8"), ensure_ascii=False)
    print(f"wrote {len(wanted)} sentences' symbol ids to {path}")


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

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    frontend = precomputed_frontend(args.symbols) if args.symbols else None
    t0 = time.monotonic()
    engine = EmbeddedEngine(frontend=frontend)
    engine.load(args.device, fp16=False)
    load_s = time.monotonic() - t0
    sentences = sentences_of(texts)
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
