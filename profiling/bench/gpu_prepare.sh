#!/usr/bin/env bash
# Prepare .gpu/ here, in this project's environment, for profiling/bench/gpu_suite.sh on a bare GPU box (torch, numpy,
# pandas, pyyaml, pytest and nvidia-ml-py, but no phkit or gradio). Then carry `.gpu` with the run.
#   .gpu/cache/embedded/   the converted embedded weights (46 MiB)
#   .gpu/symbols.json      phkit ids for every sentence the suite and the requires_cuda tests speak
#   .gpu/texts8.txt        the first 8 workload texts (service benchmark)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
CACHE=${TTS_CACHE_DIR:-$HOME/.cache/zh-tts-demo}
mkdir -p .gpu/cache
"$PY" -c "from app.engines.embedded.weights import load_weights; load_weights()"  # converts once if needed
cp -r "$CACHE/embedded" .gpu/cache/
PYTHONPATH=. "$PY" - <<'PYEOF'
from profiling.bench.engine import export_symbols
from profiling.loadgen import load_workload
from tests.test_compare import CUDA_TEXTS
from tests.test_engine_embedded import SENTENCES
from tests.test_service import PHRASES

export_symbols(".gpu/symbols.json", load_workload() + SENTENCES + PHRASES + CUDA_TEXTS)
PYEOF
grep -v '^#' profiling/workload_zh.txt | grep -v '^\s*$' | head -8 > .gpu/texts8.txt
du -sh .gpu
