#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a lent GPU machine that has torch (CUDA), numpy, pandas and
# nvidia-ml-py but not phkit or gradio. Prepare here first (see README "Profiling on a GPU"):
#   .gpu/cache/embedded/{acoustic,vocoder}.safetensors + acoustic.hparams.json  (converted weights)
#   .gpu/symbols.json   (python -m profiling.bench.engine --export-symbols .gpu/symbols.json)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=. TTS_CACHE_DIR=.gpu/cache PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SYM=.gpu/symbols.json
run() { echo "== $*"; "$@"; echo "== exit $?"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  run python3 -m pytest -q -p no:cacheprovider tests/test_batcher.py tests/test_monitor.py
  run timeout 150 python3 -m profiling.bench.gpu_checks --symbols $SYM
  run timeout 120 python3 -m profiling.bench.engine --device cuda --precision fp32,fp16 --batch 1,2,4,8,16,32 --symbols $SYM --out "$OUT/bench_engine.csv"
  run timeout 120 python3 -m profiling.bench.service --device cuda --precision fp32,fp16 --clients 1,4,8,16 --batch 1,4,8 --texts .gpu/texts8.txt --symbols $SYM --out "$OUT/bench_service.csv"
  run timeout 150 python3 -m profiling.compare --device cuda --fp16 on,off --batch 1,4,8 --clear-cache on,off --concurrency 8 --symbols $SYM --out "$OUT/compare.csv"
} 2>&1 | tee "$OUT/gpu_suite.log"
