#!/usr/bin/env bash
# Prepare .gpu/ (or $GPU_DIR) here, in the app's own environment (`bash scripts/setup.sh`: phkit, jieba, pypinyin; no
# pytest needed), for profiling/bench/gpu_suite.sh on a bare GPU box. Then carry `.gpu` with the device call.
#   cache/embedded/        the converted embedded weights (44 MiB)
#   symbols.json           phkit ids of every sentence the suite and the requires_cuda tests speak
#   sambert_symbols.json   the Sambert frontend's symbols for the warm-up sentence (the Sambert self-check)
#   texts8.txt             the first 8 workload texts (the service benchmark)
# It checks that the working tree and the folder together stay within what a call carries (48 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
GPU_DIR=${GPU_DIR:-.gpu}
CACHE=${TTS_CACHE_DIR:-$HOME/.cache/zh-tts-demo}
mkdir -p "$GPU_DIR/cache"
TTS_CACHE_DIR="$CACHE" "$PY" -c "from app.engines.embedded.weights import load_weights; load_weights()"  # converts once
rm -rf "$GPU_DIR/cache/embedded"
mkdir -p "$GPU_DIR/cache/embedded"
# the converted weights only: not the ONNX exports beside them (onnx/, 17 MiB; the GPU box's ORT has no CUDA provider)
find "$CACHE/embedded" -maxdepth 1 ! -type d -exec cp {} "$GPU_DIR/cache/embedded/" \;
PYTHONPATH=. "$PY" -m profiling.bench.gpu_files export "$GPU_DIR"
