"""The GPU suite's first section: is this box ready? Device, prepared folder, and every module the sections import.

    python -m profiling.bench.bare profiling.bench.gpu_preflight --gpu-dir .gpu

Run through profiling/bench/bare.py (as the suite does), the imports below fail here exactly where they would fail
on the bare GPU box; they include what the sections import lazily inside their main(), where a failure would
otherwise surface minutes later. Exits 1, naming each problem, when anything is missing.
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Every module a section runs or imports on its way (the lazy ones too), the requires_cuda tests' modules included.
SECTION_IMPORTS = (
    "profiling.bench.gpu_checks", "profiling.bench.gpu_selfcheck", "profiling.bench.engine", "profiling.bench.sambert",
    "profiling.bench.service", "profiling.bench.gpu_goals", "app.engines.embedded.engine", "app.engines.embedded.frontend",
    "app.engines.sambert.engine", "app.engines.sambert.runtime", "app.engines.sambert.folder", "app.engines.sambert.frontend",
    "app.service", "app.settings", "profiling.monitor", "profiling.quality", "profiling.compare", "profiling.loadgen",
    "tests.fixtures.sambert_writer", "tests.conftest", "tests.test_static_decoding", "tests.test_self_check",
    "tests.test_compare", "tests.test_engine_embedded", "tests.test_embedded_dropout", "tests.test_sambert_batch", "pynvml",
    "profiling.trace", "profiling.trace_report", "app.spans", "tests.test_spans", "tests.test_trace",
)


def device_lines() -> list[str]:
    import torch

    lines = [f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'not available'}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"device 0: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        lines.append(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-dir", default=".gpu")
    args = p.parse_args(argv)
    problems = []
    t0 = time.monotonic()
    for name in SECTION_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # one line per module that cannot be imported here
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
    print(f"imported {len(SECTION_IMPORTS) - len(problems)} of {len(SECTION_IMPORTS)} section modules in {time.monotonic() - t0:.1f} s")
    print("\n".join(device_lines()))
    from profiling.bench.gpu_files import dir_mib, problems as folder_problems

    gpu_dir = Path(args.gpu_dir)
    problems += folder_problems(gpu_dir, with_tree=False)
    if gpu_dir.is_dir():
        print(f"{gpu_dir}: {dir_mib(gpu_dir):.1f} MiB")
    for line in problems:
        print(f"PROBLEM  {line}")
    if problems:
        print(f"preflight: {len(problems)} problem(s); first: {problems[0][:160]}")
        return 1
    print("preflight: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
