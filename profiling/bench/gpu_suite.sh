#!/usr/bin/env bash
# Every GPU check and benchmark in one run (about 7 minutes on an H100/H200), for a lent GPU machine that has torch
# (CUDA), numpy, pandas, pyyaml, pytest and nvidia-ml-py but not phkit or gradio. Prepare here first:
#   bash profiling/bench/gpu_prepare.sh            (writes .gpu/: weights, symbol ids, texts; carry `.gpu`)
# Then on the GPU box:  OUT=$OUT bash profiling/bench/gpu_suite.sh [section ...]
# Sections (default all, in this order): tests checks engine sambert service compare trace. Each prints its table; the CSVs
# and the whole log land in $OUT. What each measures (issue 11):
#   tests    requires_cuda pytest: graphs == dynamic, 32 concurrent callers with graphs on, FP16/graph comparison rows
#   checks   profiling.bench.gpu_checks: batching, FP16, graphs vs dynamic vs eager static, capture-OOM fallback,
#            settings switched mid-load, OOM splitting, Sambert graphs (tiny and real size), NVML
#   engine   embedded engine, batch 1/8/32 x precision (acoustic/vocoder fp32, fp16, bf16) x graphs/dynamic:
#            audio-s/s, RTF, peak VRAM, mean GPU utilisation, MCD / frames changed / non-finite vs FP32 dynamic
#   sambert  the same for Sambert on random weights of the real size (decoder/vocoder precisions)
#   service  8 concurrent clients, max batch 8, fp32/fp16 x graphs on/off: p50/p95 latency, GPU utilisation
#   compare  python -m profiling.compare with the graphs axis and the quality columns
#   trace    python -m profiling.trace: torch.profiler over 3 batches of 8 per setting, fp32/fp16 x graphs on/off: host ops,
#            kernel launches and kernels per decoded frame, GPU busy share, top ops by stage (about 90 s; traces in $OUT/traces)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=. TTS_CACHE_DIR=.gpu/cache TTS_SYMBOLS=.gpu/symbols.json PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SYM=.gpu/symbols.json
SECTIONS=${*:-tests checks engine sambert service compare trace}
run() { echo "== $*"; "$@"; echo "== exit $?"; }
section() {
  case $1 in
    tests) run timeout 210 python3 -m pytest -q -p no:cacheprovider -m requires_cuda \
             tests/test_static_decoding.py tests/test_compare.py tests/test_engine_embedded.py tests/test_sambert_batch.py \
             tests/test_spans.py tests/test_trace.py
           run timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_batcher.py tests/test_monitor.py tests/test_quality.py ;;
    checks) run timeout 180 python3 -m profiling.bench.gpu_checks --symbols $SYM ;;
    engine) run timeout 180 python3 -m profiling.bench.engine --device cuda --symbols $SYM --batch 1,8,32 \
              --precision fp32,fp16,bf16,fp16/bf16,bf16/bf16 --decoder graphs,dynamic --out "$OUT/bench_engine.csv" ;;
    sambert) run timeout 150 python3 -m profiling.bench.sambert --device cuda --batch 1,8,32 \
               --precision fp32,fp16,bf16,fp16/bf16 --decoder graphs,dynamic --out "$OUT/bench_sambert.csv" ;;
    service) run timeout 120 python3 -m profiling.bench.service --device cuda --precision fp32,fp16 --cuda-graphs on,off \
               --clients 8 --batch 8 --texts .gpu/texts8.txt --no-paragraph --symbols $SYM --out "$OUT/bench_service.csv" ;;
    compare) run timeout 150 python3 -m profiling.compare --device cuda --fp16 on,off --batch 8,32 --cuda-graphs on,off \
               --concurrency 8 --symbols $SYM --out "$OUT/compare.csv" ;;
    trace) run timeout 150 python3 -m profiling.trace --device cuda --symbols $SYM --precision fp32,fp16 --graphs on,off \
             --batch 8 --batches 3 --texts .gpu/texts8.txt --trace-dir "$OUT/traces" --out "$OUT/trace.csv" ;;
    *) echo "unknown section $1 (tests checks engine sambert service compare trace)"; return 2 ;;
  esac
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  for s in $SECTIONS; do
    start=$SECONDS
    section "$s"
    echo "== section $s took $((SECONDS - start)) s"
  done
} 2>&1 | tee "$OUT/gpu_suite.log"
