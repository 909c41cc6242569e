"""Engine registry: builds an engine by name, importing only what that engine needs."""
from __future__ import annotations

from app.engines.base import NEUTRAL, EngineBase, Utterance
from app.settings import EngineSettings

__all__ = ["NEUTRAL", "EngineBase", "Utterance", "create_engine"]


def create_engine(settings: EngineSettings) -> EngineBase:
    """Build (not yet load) the engine named in settings."""
    if settings.name == "embedded":
        from app.engines.embedded.engine import EmbeddedEngine

        return EmbeddedEngine()
    if settings.name == "sambert":
        from app.engines.sambert.engine import SambertEngine

        if not settings.model:
            raise ValueError("--engine sambert needs --model PATH_OR_ID (a ModelScope Sambert-HifiGan folder or hub id, "
                             "e.g. damo/speech_sambert-hifigan_tts_zh-cn_16k)")
        return SambertEngine(model=settings.model, emotions=dict(settings.emotions))
    if settings.name == "modelscope":
        from app.engines.modelscope.engine import ModelScopeEngine

        return ModelScopeEngine(model=settings.model or ModelScopeEngine.DEFAULT_MODEL, emotions=dict(settings.emotions))
    raise ValueError(f"unknown engine {settings.name!r}")
