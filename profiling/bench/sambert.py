"""Benchmark the native Sambert-HifiGan runtime on random weights of the official 16k config size.

    python -m profiling.bench.sambert --device cpu|cuda --precision fp32,fp16,bf16,fp16/bf16 --decoder graphs,dynamic \
        --batch 1,8,32 [--runtime torch,onnxruntime] [--out results.csv]

precision: DECODER[/VOCODER] (fp32, fp16, bf16; the text encoder and durations always stay FP32). decoder: dynamic
(today's loop), graphs (the static step replayed as CUDA graphs) or static (the static step run eagerly). runtime: what
runs the HiFi-GAN vocoder, torch or onnxruntime (exported once per precision; export_s says how long). Each row also
gives its fidelity against the FP32 dynamic rendering of the same items (MCD dB, frame counts changed, non-finite).
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

from app.engines.precision import DTYPES
from app.engines.sambert.folder import load_model_folder
from app.engines.sambert.runtime import SambertVoice, SymbolItem
from app.engines.sambert.symbols import DEFAULT_PHONES
from tests.fixtures.sambert_writer import FolderSpec, write_model_folder

MANDARIN_PHONES = DEFAULT_PHONES[:62]  # the `_c` initials/finals a Chinese sentence is made of


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark invocation."""

    device: str  # "cpu" or "cuda"
    precisions: tuple[str, ...]  # "fp32" or "DECODER[/VOCODER]" dtypes to run
    decoders: tuple[str, ...]  # "dynamic", "graphs" (CUDA) or "static"
    batches: tuple[int, ...]  # batch sizes to run
    symbols_min: int  # shortest item, in symbols (a short sentence is ~20, ~1.5 s of speech)
    symbols_max: int  # longest item, in symbols
    repeats: int  # timed runs per setting (median reported)
    warmup: int  # untimed runs per setting
    threads: int  # torch CPU threads
    runtimes: tuple[str, ...] = ("torch",)  # what runs the vocoder: torch, onnxruntime


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


def set_decoder(voice: SambertVoice, decoder: str) -> tuple[bool, float, str]:
    """Put a decoder in force; returns (ok, seconds to build or capture, what is in force or why not)."""
    t0 = time.monotonic()
    voice.set_static_decoding(False)
    if decoder == "graphs" and voice.device.type != "cuda":
        return False, 0.0, "CUDA graphs need CUDA"
    if decoder != "dynamic":
        try:
            voice.set_static_decoding(True)
        except Exception as exc:  # e.g. out of memory at capture: reported, the benchmark goes on
            voice.set_static_decoding(False)
            return False, time.monotonic() - t0, f"capture failed: {type(exc).__name__}: {str(exc)[:100]}"
        return True, time.monotonic() - t0, voice.static.describe()
    return True, 0.0, "dynamic"


def run(options: BenchOptions, out: str | None = None) -> pd.DataFrame:
    """All settings on one resident voice; one flat row per (precision, decoder, batch), each written to `out` (CSV)
    as soon as it is measured, so a run cut off keeps what it measured."""
    from profiling.monitor import Monitor
    from profiling.quality import quality_summary

    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(0)
    largest = max(options.batches)
    items = [SymbolItem(sentence_symbols(rng, int(rng.integers(options.symbols_min, options.symbols_max + 1))))
             for _ in range(largest)]
    with tempfile.TemporaryDirectory() as tmp:
        files = load_model_folder(write_model_folder(tmp, FolderSpec(size="real"))).voices["test_voice"]
    voice = SambertVoice(files, options.device)
    voice.max_batch = largest
    cuda = options.device.startswith("cuda")
    reference = [r.waveform for r in voice.synthesize(items)]  # FP32, dynamic loop
    monitor = Monitor(interval_s=0.1).start() if cuda else None
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        if out:
            pd.DataFrame(rows).to_csv(out, index=False)

    onnx_dir = tempfile.TemporaryDirectory()
    try:
        for precision in options.precisions:
            decoder_dtype, _, vocoder_dtype = precision.partition("/")
            voice.set_dtypes(decoder_dtype, vocoder_dtype or decoder_dtype)
            ort_part, ort_why = _ort_part(voice, options, onnx_dir.name)
            for decoder in options.decoders:
                ok, setup_s, detail = set_decoder(voice, decoder)
                if not ok:
                    record({"precision": precision, "decoder": decoder, "status": f"skipped: {detail}"})
                    continue
                for batch, runtime in [(b, r) for b in options.batches for r in options.runtimes]:
                    if runtime == "onnxruntime" and ort_part is None:
                        record({"precision": precision, "decoder": decoder, "batch": batch, "runtime": runtime,
                                "status": f"skipped: {ort_why}"})
                        continue
                    voice.vocoder_ort = ort_part if runtime == "onnxruntime" else None
                    try:
                        row = {"precision": precision, "decoder": decoder, "runtime": runtime,
                               **_time_cell(voice, items[:batch], options, monitor), "setup_s": round(setup_s, 2),
                               "export_s": round(ort_part.export_s, 2) if runtime == "onnxruntime" else float("nan"),
                               "detail": detail, "status": "ok"}
                    except Exception as exc:  # one GPU run measures everything: a failing cell is a row, not a crash
                        record({"precision": precision, "decoder": decoder, "batch": batch, "runtime": runtime,
                                "status": f"error: {type(exc).__name__}: {str(exc)[:120]}"})
                        continue
                    row.update(quality_summary(reference[:batch], row.pop("waveforms"), voice.sample_rate_hz))
                    record(row)
                    print(f"{precision} {decoder} batch {batch} {runtime}: {rows[-1]['throughput (audio s / s)']} audio s/s",
                          flush=True)
    finally:
        voice.vocoder_ort = None
        onnx_dir.cleanup()
        if monitor is not None:
            monitor.close()
    return pd.DataFrame(rows)


def _ort_part(voice: SambertVoice, options: BenchOptions, folder: str):
    """The voice's vocoder at its precision in force on ONNX Runtime, or (None, why not)."""
    if "onnxruntime" not in options.runtimes:
        return None, "not asked"
    from pathlib import Path

    from app.engines.onnx_runtime import OrtPart

    try:
        return OrtPart.build(voice.vocoder, "bench-hifigan", Path(folder), voice.hop_samples, voice.vocoder.config.in_channels,
                             progress=lambda line: print(line, flush=True)), ""
    except Exception as exc:  # e.g. bf16, or no CUDA provider: a row says so
        return None, f"{type(exc).__name__}: {str(exc)[:160]}"


def _time_cell(voice: SambertVoice, work: list[SymbolItem], options: BenchOptions, monitor) -> dict:
    """Warm up, then the median of `repeats` timed runs of one batch."""
    cuda = options.device.startswith("cuda")
    for _ in range(options.warmup):
        voice.synthesize(work)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, results = [], []
    t_wall = time.time()
    for _ in range(options.repeats):
        _sync(options.device)
        start = time.perf_counter()
        results = voice.synthesize(work)
        _sync(options.device)
        walls.append(time.perf_counter() - start)
    usage = monitor.summary(t_wall, time.time()) if monitor is not None else {}
    audio_s = sum(len(r.waveform) for r in results) / voice.sample_rate_hz
    wall = statistics.median(walls)
    return {
        "device": torch.cuda.get_device_name() if cuda else options.device,
        "batch": len(work),
        "audio_s": round(audio_s, 2),
        "wall_s (median)": round(wall, 3),
        "rtf": round(wall / audio_s, 4),
        "throughput (audio s / s)": round(audio_s / wall, 2),
        "peak_mem (MiB)": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "peak_vram_used (MiB)": usage.get("peak_vram_used_mib"),
        "mean_gpu_util (%)": usage.get("mean_gpu_util_pct"),
        "waveforms": [r.waveform for r in results],
    }


def parse_args(argv: list[str] | None = None) -> tuple[BenchOptions, str | None]:
    """CLI -> BenchOptions, with errors that name the bad value."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", help="comma list of fp32 or DECODER[/VOCODER], e.g. fp32,fp16,bf16/bf16")
    parser.add_argument("--decoder", default="dynamic", help="comma list of dynamic, graphs, static")
    parser.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    parser.add_argument("--symbols", default="25,60", help="min,max symbols per item")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--runtime", default="torch", help="comma list of torch, onnxruntime: what runs the vocoder")
    parser.add_argument("--out", default=None, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device {args.device!r} must be cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r} but CUDA is not available")
    precisions = tuple(p.strip() for p in args.precision.split(","))
    bad = [p for p in precisions if any(d not in DTYPES for d in p.split("/")) or p.count("/") > 1]
    if bad:
        parser.error(f"--precision {','.join(bad)!r}: each must be DECODER[/VOCODER] from {', '.join(DTYPES)}")
    decoders = tuple(d.strip() for d in args.decoder.split(","))
    if any(d not in ("dynamic", "graphs", "static") for d in decoders):
        parser.error(f"--decoder {args.decoder!r}: choose from dynamic, graphs, static")
    try:
        batches = tuple(int(b) for b in args.batch.split(","))
        lo, hi = (int(s) for s in args.symbols.split(","))
    except ValueError:
        parser.error(f"--batch {args.batch!r} and --symbols {args.symbols!r} must be comma lists of integers")
    if min(batches) < 1 or not 1 <= lo <= hi:
        parser.error(f"--batch {args.batch!r} needs sizes >= 1 and --symbols {args.symbols!r} needs 1 <= min <= max")
    runtimes = tuple(r.strip() for r in args.runtime.split(","))
    if any(r not in ("torch", "onnxruntime") for r in runtimes):
        parser.error(f"--runtime {args.runtime!r}: choose from torch, onnxruntime")
    opts = BenchOptions(args.device, precisions, decoders, batches, lo, hi, max(1, args.repeats), max(0, args.warmup),
                        max(1, args.threads), runtimes)
    return opts, args.out


def main(argv: list[str] | None = None) -> None:
    options, out = parse_args(argv)
    table = run(options, out)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False))
    if out:
        table.to_csv(out, index=False)


if __name__ == "__main__":
    main()
