"""Shared fixtures: the real embedded engine is loaded once per test session (CPU)."""
from __future__ import annotations

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_cuda: needs an NVIDIA GPU; skipped without one")
    config.addinivalue_line("markers", "browser: drives headless Chromium against a launched app")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine():
    """The real embedded engine on CPU in FP32, loaded once."""
    from app.engines.embedded.engine import EmbeddedEngine

    eng = EmbeddedEngine()
    eng.load("cpu", fp16=False)
    return eng


@pytest.fixture(scope="session")
def cuda_engine():
    """The real embedded engine on CUDA (only requested by requires_cuda tests).

    On a GPU box without phkit, TTS_SYMBOLS names the ids exported beforehand (profiling/bench/gpu_prepare.sh).
    """
    import os

    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend

    symbols = os.environ.get("TTS_SYMBOLS")
    eng = EmbeddedEngine(frontend=precomputed_frontend(symbols) if symbols else None)
    eng.load("cuda", fp16=True)
    yield eng
    eng.unload()
