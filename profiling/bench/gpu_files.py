"""What the GPU suite carries to a bare GPU box (.gpu/ by default), how it is made here and checked there.

    python -m profiling.bench.gpu_files export DIR     (here, in the app's environment: phkit, jieba, pypinyin)
    python -m profiling.bench.gpu_files check DIR      (anywhere: files present, every sentence's symbols there, size)

DIR holds cache/embedded/ (the converted embedded weights), symbols.json (phkit ids of every sentence the suite and
the requires_cuda tests speak), sambert_symbols.json (the Sambert frontend's symbols for the warm-up sentence and the
workload: the Sambert self-check) and texts8.txt (the service benchmark's texts). It travels with the working tree,
and at most CARRY_LIMIT_MIB may travel in all.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CARRY_LIMIT_MIB = 48.0  # what a device call may carry: the working tree and DIR together
WEIGHT_FILES = ("acoustic.safetensors", "vocoder.safetensors", "acoustic.hparams.json")
SYMBOLS, SAMBERT_SYMBOLS, TEXTS8 = "symbols.json", "sambert_symbols.json", "texts8.txt"
SERVICE_TEXTS = 8  # workload texts the service benchmark sends (time budget)


def spoken_sentences() -> list[str]:
    """Every normalised sentence the suite's sections and the requires_cuda tests give the embedded engine."""
    from app.engines.base import WARMUP_TEXT
    from profiling.bench.service import PARAGRAPH
    from profiling.loadgen import load_workload, workload_sentences
    from profiling.sentences import all_sentences

    return workload_sentences(load_workload() + all_sentences() + ["预热", "你好", WARMUP_TEXT, PARAGRAPH])


def sambert_sentences() -> list[str]:
    """What the Sambert engine speaks in the suite: its self-check's warm-up sentence (and the workload, for later)."""
    from app.engines.base import WARMUP_TEXT
    from profiling.loadgen import load_workload, workload_sentences

    return workload_sentences([WARMUP_TEXT] + load_workload())


def export(gpu_dir: Path) -> None:
    """Write DIR's symbol tables and texts (the weights are copied by gpu_prepare.sh)."""
    import contextlib
    import io

    from app.engines.embedded.frontend import export_ids, warm_phkit
    from app.engines.sambert.frontend import export_symbols
    from profiling.loadgen import load_workload

    gpu_dir.mkdir(parents=True, exist_ok=True)
    warm_phkit()  # its dictionaries' progress bars and jieba's start-up lines, out of the way
    with contextlib.redirect_stderr(io.StringIO()):
        export_symbols(str(gpu_dir / SAMBERT_SYMBOLS), ["预热"])
    print(f"{export_ids(str(gpu_dir / SYMBOLS), spoken_sentences())} sentences' phkit ids -> {gpu_dir / SYMBOLS}")
    print(f"{export_symbols(str(gpu_dir / SAMBERT_SYMBOLS), sambert_sentences())} sentences' Sambert symbols -> "
          f"{gpu_dir / SAMBERT_SYMBOLS}")
    (gpu_dir / TEXTS8).write_text("\n".join(load_workload()[:SERVICE_TEXTS]) + "\n", encoding="utf8")


def tree_mib(root: Path) -> float:
    """MiB of the working tree a device call carries: tracked and untracked-but-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file()) / 2**20


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def problems(gpu_dir: Path, with_tree: bool) -> list[str]:
    """What is wrong with DIR for the suite (empty: ready)."""
    import json

    found = []
    for name in [f"cache/embedded/{f}" for f in WEIGHT_FILES] + [SYMBOLS, SAMBERT_SYMBOLS, TEXTS8]:
        if not (gpu_dir / name).is_file():
            found.append(f"{gpu_dir / name} is missing: run bash profiling/bench/gpu_prepare.sh here")
    if found:
        return found
    for table, sentences in ((SYMBOLS, spoken_sentences()), (SAMBERT_SYMBOLS, sambert_sentences())):
        have = json.loads((gpu_dir / table).read_text(encoding="utf8"))
        lacking = sorted({s for s in sentences if s not in have})
        if lacking:
            found.append(f"{gpu_dir / table} lacks {len(lacking)} sentences (e.g. {lacking[0]!r}): run gpu_prepare.sh again")
    size = dir_mib(gpu_dir)
    if with_tree:
        size += tree_mib(Path.cwd())
    if size > CARRY_LIMIT_MIB:
        found.append(f"{'tree + ' if with_tree else ''}{gpu_dir} is {size:.1f} MiB, over the {CARRY_LIMIT_MIB:.0f} MiB a call carries")
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("export", "check"):
        print(__doc__)
        return 2
    gpu_dir = Path(argv[1])
    if argv[0] == "export":
        export(gpu_dir)
    found = problems(gpu_dir, with_tree=argv[0] == "export")
    for line in found:
        print(f"PROBLEM  {line}")
    if not found:
        tree = f"working tree {tree_mib(Path.cwd()):.1f} MiB + " if argv[0] == "export" else ""
        print(f"{gpu_dir} ready: {tree}{gpu_dir} {dir_mib(gpu_dir):.1f} MiB (limit {CARRY_LIMIT_MIB:.0f} MiB carried)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
