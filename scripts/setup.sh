#!/usr/bin/env bash
# Create .venv and install everything the app needs (with --dev: and the tests), from nothing.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
# The embedded voice's weights: ttskit's wheel carries them. --no-deps because its pins do not build on 3.11.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps ttskit==0.3.8
# Convert the weights once (sha256-checked) so the first start is fast.
.venv/bin/python -c "from app.engines.embedded.weights import load_weights; load_weights()"
