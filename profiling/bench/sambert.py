"""Benchmark the native Sambert-HifiGan runtime on random weights of the official 16k config size.

    python -m profiling.bench.sambert --device cpu|cuda --fp16 on,off --batch 1,8,16 [--out results.csv]

Needs only torch, numpy, pandas and pyyaml: it feeds symbol sequences directly (no jieba/pypinyin frontend).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from app.engines.sambert.folder import load_model_folder
from app.engines.sambert.runtime import SambertVoice, SymbolItem
from app.engines.sambert.symbols import DEFAULT_PHONES
from tests.fixtures.sambert_writer import FolderSpec, write_model_folder

MANDARIN_PHONES = DEFAULT_PHONES[:62]  # the `_c` initials/finals a Chinese sentence is made of


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark invocation."""

    device: str  # "cpu" or "cuda"
    fp16: tuple[bool, ...]  # precisions to run
    batches: tuple[int, ...]  # batch sizes to run
    symbols_min: int  # shortest item, in symbols (a short sentence is ~20, ~1.5 s of speech)
    symbols_max: int  # longest item, in symbols
    repeats: int  # timed runs per setting (median reported)
    warmup: int  # untimed runs per setting
    threads: int  # torch CPU threads


def sentence_symbols(rng: np.random.Generator, n: int) -> str:
    """A random sentence-like symbol string: n phones, breaks every few, final #4."""
    out = []
    for i in range(n):
        phone = MANDARIN_PHONES[int(rng.integers(len(MANDARIN_PHONES)))]
        out.append(f"{{{phone}$tone{int(rng.integers(1, 6))}$s_begin$word_middle$emotion_neutral$F7}}")
        if i % 4 == 3:
            out.append("{#1$tone_none$s_none$word_none$emotion_neutral$F7}")
    out.append("{#4$tone_none$s_none$word_none$emotion_neutral$F7}")
    return " ".join(out)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(options: BenchOptions) -> pd.DataFrame:
    """All settings on one resident voice; one flat row per (precision, batch)."""
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(0)
    largest = max(options.batches)
    items = [SymbolItem(sentence_symbols(rng, int(rng.integers(options.symbols_min, options.symbols_max + 1))))
             for _ in range(largest)]
    with tempfile.TemporaryDirectory() as tmp:
        files = load_model_folder(write_model_folder(tmp, FolderSpec(size="real"))).voices["test_voice"]
    voice = SambertVoice(files, options.device)
    rows = []
    cuda = options.device.startswith("cuda")
    for fp16 in options.fp16:
        voice.set_fp16(fp16)
        for batch in options.batches:
            work = items[:batch]
            for _ in range(options.warmup):
                voice.synthesize(work)
            if options.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            walls, audio_s = [], 0.0
            for _ in range(options.repeats):
                _sync(options.device)
                start = time.perf_counter()
                results = voice.synthesize(work)
                _sync(options.device)
                walls.append(time.perf_counter() - start)
                audio_s = sum(len(r.waveform) for r in results) / voice.sample_rate_hz
            wall = statistics.median(walls)
            rows.append({
                "device": options.device if not options.device.startswith("cuda") else torch.cuda.get_device_name(),
                "precision": "fp16" if fp16 else "fp32",
                "batch": batch,
                "audio_s": round(audio_s, 2),
                "wall_s (median)": round(wall, 3),
                "rtf": round(wall / audio_s, 4),
                "throughput (audio s / s)": round(audio_s / wall, 2),
                "peak_mem (MiB)": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            })
    return pd.DataFrame(rows)


def parse_args(argv: list[str] | None = None) -> tuple[BenchOptions, str | None]:
    """CLI -> BenchOptions, with errors that name the bad value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--fp16", default="off", help="comma list of on/off")
    parser.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    parser.add_argument("--symbols", default="25,60", help="min,max symbols per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device {args.device!r} must be cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r} but CUDA is not available")
    flags = {"on": True, "off": False}
    try:
        fp16 = tuple(flags[f.strip()] for f in args.fp16.split(","))
    except KeyError as err:
        parser.error(f"--fp16 value {err.args[0]!r} must be on or off")
    try:
        batches = tuple(int(b) for b in args.batch.split(","))
        lo, hi = (int(s) for s in args.symbols.split(","))
    except ValueError:
        parser.error(f"--batch {args.batch!r} and --symbols {args.symbols!r} must be comma lists of integers")
    if min(batches) < 1 or not 1 <= lo <= hi:
        parser.error(f"--batch {args.batch!r} needs sizes >= 1 and --symbols {args.symbols!r} needs 1 <= min <= max")
    opts = BenchOptions(args.device, fp16, batches, lo, hi, max(1, args.repeats), max(0, args.warmup), max(1, args.threads))
    return opts, args.out


def main(argv: list[str] | None = None) -> None:
    options, out = parse_args(argv)
    table = run(options)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    if out:
        table.to_csv(out, index=False)


if __name__ == "__main__":
    main()
