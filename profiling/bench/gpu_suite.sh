#!/usr/bin/env bash
# Every GPU check and measurement in one device call of at most 8 minutes (profiling/bench/gpu_suite.py says how).
# Prepare here first:  bash profiling/bench/gpu_prepare.sh        (writes .gpu/; carry `.gpu` with the call)
# On the GPU box:      OUT=$OUT bash profiling/bench/gpu_suite.sh [SECTION ...]
# Here, no GPU:        bash profiling/bench/gpu_suite.sh          (a dry run: CUDA sections skipped, saying why)
# Sections, most valuable first: preflight correctness engine sambert service trace tests goals. Exits 1 if one failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH=. PYTHONUNBUFFERED=1 exec "$PY" -m profiling.bench.gpu_suite "$@"
