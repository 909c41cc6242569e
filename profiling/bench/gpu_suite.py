"""The GPU suite: every GPU check and measurement in one device call of at most 8 minutes, section by section.

    bash profiling/bench/gpu_suite.sh [--dry-run] [SECTION ...]        (results in $OUT, default gpu-out/)

Sections run in SECTIONS order, most valuable first, each as its own process under its own time budget (killed at
it), each through profiling/bench/bare.py so the packages the bare GPU box lacks are blocked here too, and each writes
its CSV into $OUT as soon as it ends: a run cut off by the device's limit still brings back what it finished. Without
CUDA (or with --dry-run) the CUDA sections are skipped, saying so, and the others run: that is the CPU dry run the
test suite keeps (tests/test_gpu_suite.py). The suite ends with a table (section, result, exit, seconds, budget,
skipped and why), also written to sections.csv, and exits 1 when a section failed or ran out of its budget (a skipped
one does not count).

Adding a section: one Section(...) in SECTIONS, with its budget taken from the others (they add up to SUITE_LIMIT_S)
and its files counted against FILES_BACK (what a device call brings back).
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SUITE_LIMIT_S = 480  # one device call may run 600 s and a session's whole device time is 900 s, start-up included
FILES_BACK = 8  # files a device call brings back (16 MiB each at most): the log, sections.csv and one CSV per section
SKIPPED_EXIT = 77  # a section's process exits with this (its last line saying why) when it has nothing to run
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL for a section past its budget


@dataclass(frozen=True)
class Section:
    """One step of the suite."""

    name: str
    budget_s: int  # killed past this (and cut to what is left of SUITE_LIMIT_S)
    cuda: bool  # needs a CUDA device: skipped in a dry run
    module: str  # run as python -m profiling.bench.bare MODULE ARGS
    args: tuple[str, ...]  # {out} and {gpu} are replaced by the results folder and the prepared folder
    writes: tuple[str, ...]  # files it leaves in {out}
    what: str  # one line: what it settles


SECTIONS = (
    Section("preflight", 15, False, "profiling.bench.gpu_preflight", ("--gpu-dir", "{gpu}"), (),
            "the device, the prepared folder, and every module the sections import, importable on the bare box"),
    Section("correctness", 105, True, "profiling.bench.gpu_checks",
            ("--symbols", "{gpu}/symbols.json", "--sambert-symbols", "{gpu}/sambert_symbols.json", "--out", "{out}/correctness.csv"),
            ("correctness.csv",),
            "start-up self-check (time, verdicts), graphs vs dynamic vs eager static, FP16, OOM, callers, Sambert graphs"),
    Section("engine", 105, True, "profiling.bench.engine",
            ("--device", "cuda", "--symbols", "{gpu}/symbols.json", "--batch", "1,8,32", "--precision", "fp32,fp16,bf16,fp16/bf16",
             "--decoder", "graphs,dynamic", "--out", "{out}/engine.csv"), ("engine.csv",),
            "embedded: batch 1/8/32 x precision x graphs on/off: audio-s/s, RTF, peak memory, utilisation, MCD/frames"),
    Section("sambert", 65, True, "profiling.bench.sambert",
            ("--device", "cuda", "--batch", "1,8,32", "--precision", "fp32,fp16,bf16", "--decoder", "graphs,dynamic",
             "--repeats", "2", "--out", "{out}/sambert.csv"), ("sambert.csv",),
            "Sambert (real-size random weights): the same table"),
    Section("service", 55, True, "profiling.bench.service",
            ("--device", "cuda", "--precision", "fp32,fp16", "--cuda-graphs", "off,on", "--clients", "8", "--batch", "8",
             "--texts", "{gpu}/texts8.txt", "--symbols", "{gpu}/symbols.json", "--out", "{out}/service.csv"), ("service.csv",),
            "8 concurrent clients: p50/p95 latency, GPU utilisation; time to first audio streamed vs whole"),
    Section("trace", 65, True, "profiling.trace",
            ("--device", "cuda", "--symbols", "{gpu}/symbols.json", "--precision", "fp32,fp16", "--graphs", "on,off", "--batch", "8",
             "--batches", "2", "--texts", "{gpu}/texts8.txt", "--trace-dir", "/tmp/tts-gpu-traces", "--out", "{out}/trace.csv"),
            ("trace.csv",),
            "torch.profiler inside batches of 8, fp32/fp16 x graphs on/off: host ops, launches and kernels per frame, GPU busy"),
    Section("tests", 55, True, "pytest",
            ("-q", "-p", "no:cacheprovider", "-m", "requires_cuda", "tests/test_static_decoding.py", "tests/test_self_check.py",
             "tests/test_compare.py", "tests/test_engine_embedded.py", "tests/test_embedded_dropout.py", "tests/test_sambert_batch.py",
             "tests/test_spans.py", "tests/test_trace.py"), (),
            "the requires_cuda tests"),
    Section("goals", 10, False, "profiling.bench.gpu_goals", ("--dir", "{out}", "--out", "{out}/goals.csv"), ("goals.csv",),
            "the measured figures against the goals, as a table"),
)


@dataclass
class Outcome:
    section: str
    result: str  # passed, failed, timeout, skipped
    exit: int | None
    seconds: float
    budget_s: int
    why: str = ""  # for skipped / failed: the reason


def cuda_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_section(section: Section, budget_s: float, env: dict, out: Path, gpu: Path, log) -> Outcome:
    """Run one section's process, its output streamed to our stdout and the log, killed at budget_s."""
    args = [a.replace("{out}", str(out)).replace("{gpu}", str(gpu)) for a in section.args]
    cmd = [sys.executable, "-m", "profiling.bench.bare", section.module, *args]
    emit(log, f"\n== {section.name}: {section.what} (budget {budget_s:.0f} s)\n== {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)  # its own process group: a timeout kills its children too
    last: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            emit(log, line.rstrip("\n"))
            last[:] = [line.strip()] if line.strip() else last

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=budget_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        code = proc.returncode
    reader.join(timeout=5)
    seconds = time.monotonic() - t0
    if timed_out:
        return Outcome(section.name, "timeout", code, seconds, int(budget_s), f"killed after its budget of {budget_s:.0f} s")
    if code == SKIPPED_EXIT:
        return Outcome(section.name, "skipped", code, seconds, int(budget_s), last[0] if last else "")
    return Outcome(section.name, "passed" if code == 0 else "failed", code, seconds, int(budget_s),
                   "" if code == 0 else (last[0] if last else f"exit {code}"))


def emit(log, line: str) -> None:
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def table(outcomes: list[Outcome]) -> str:
    rows = [("section", "result", "exit", "seconds", "budget", "skipped or failed: why")]
    rows += [(o.section, o.result, "" if o.exit is None else str(o.exit), f"{o.seconds:.1f}", str(o.budget_s), o.why[:110])
             for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", help=f"default all, in order: {' '.join(s.name for s in SECTIONS)}")
    p.add_argument("--dry-run", action="store_true", help="skip the CUDA sections (automatic without CUDA)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-out", help="results folder (default $OUT or gpu-out)")
    p.add_argument("--gpu-dir", default=os.environ.get("GPU_DIR") or ".gpu", help="the folder gpu_prepare.sh made")
    p.add_argument("--limit-s", type=float, default=float(os.environ.get("GPU_SUITE_LIMIT_S") or SUITE_LIMIT_S),
                   help=f"the whole suite's time (default {SUITE_LIMIT_S} s): later budgets are cut to what is left")
    args = p.parse_args(argv)
    names = {s.name: s for s in SECTIONS}
    unknown = [n for n in args.sections if n not in names]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; the sections are {', '.join(names)}")
    chosen = [s for s in SECTIONS if not args.sections or s.name in args.sections]
    out, gpu = Path(args.out).resolve(), Path(args.gpu_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = cuda_present()
    dry = args.dry_run or not cuda
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "PYTHONUNBUFFERED": "1", "TTS_CACHE_DIR": str(gpu / "cache"),
           "TTS_SYMBOLS": str(gpu / "symbols.json")}
    t_start = time.monotonic()
    outcomes: list[Outcome] = []
    with open(out / "gpu_suite.log", "w", encoding="utf8") as log:
        emit(log, f"GPU suite: {len(chosen)} section(s), limit {args.limit_s:.0f} s, "
                  f"{'DRY RUN (' + ('--dry-run' if args.dry_run else 'no CUDA device') + '): CUDA sections skipped' if dry else 'CUDA present'}; "
                  f"results in {out}")
        for section in chosen:
            left = args.limit_s - (time.monotonic() - t_start)
            if section.cuda and dry:
                why = "dry run: --dry-run" if args.dry_run else "dry run: no CUDA device here"
                outcomes.append(Outcome(section.name, "skipped", None, 0.0, section.budget_s, why))
                emit(log, f"\n== {section.name}: skipped ({why})")
                continue
            if left < 5:
                outcomes.append(Outcome(section.name, "skipped", None, 0.0, section.budget_s,
                                        f"no time left of the suite's {args.limit_s:.0f} s"))
                continue
            outcomes.append(run_section(section, min(section.budget_s, left), env, out, gpu, log))
            emit(log, f"== {section.name}: {outcomes[-1].result} in {outcomes[-1].seconds:.1f} s")
        failed = [o for o in outcomes if o.result in ("failed", "timeout")]
        emit(log, f"\nGPU suite summary ({time.monotonic() - t_start:.0f} s, {'dry run' if dry else 'CUDA'}):\n{table(outcomes)}")
        emit(log, f"\n{len(failed)} section(s) failed: {', '.join(o.section for o in failed)}" if failed
             else "\nno section failed")
    with open(out / "sections.csv", "w", newline="", encoding="utf8") as f:
        writer = csv.writer(f)
        writer.writerow(["section", "result", "exit", "seconds", "budget_s", "why"])
        writer.writerows([o.section, o.result, o.exit, round(o.seconds, 1), o.budget_s, o.why] for o in outcomes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
