"""Carrying the chosen emotion to ModelScope's acoustic model through its ttsfrd frontend's symbols."""
from __future__ import annotations

import re
from typing import Any

from app.engines.base import NEUTRAL

EMOTION_PREFIX = "emotion_"  # ttsfrd / KAN-TTS spell categories emotion_<name>
# The emotion field of one unit: always after a "$", followed by "$" (speaker) or "}" if it is the last field.
_NEUTRAL_FIELD = re.compile(r"(?<=\$)emotion_neutral(?=[$}])")


def apply_emotion(symbols: str, emotion: str) -> tuple[str, int]:
    """Set emotion on every unit the frontend marked emotion_neutral; return the symbols and how many units carry it."""
    if emotion == NEUTRAL:
        return symbols, len(_NEUTRAL_FIELD.findall(symbols))
    return _NEUTRAL_FIELD.subn(EMOTION_PREFIX + emotion, symbols)


class EmotionFrontend:
    """Wraps ttsfrd's frontend in the pipeline's model: its symbols carry the chosen emotion; all else passes through."""

    def __init__(self, frontend: Any) -> None:
        self.frontend = frontend
        self.emotion = NEUTRAL  # set by the engine around each call
        self.units_tagged = 0  # units that carried the emotion in the last call

    def gen_tacotron_symbols(self, text: str) -> str:
        """The frontend's symbols for text, with the chosen emotion category on every pronounced unit."""
        symbols, self.units_tagged = apply_emotion(self.frontend.gen_tacotron_symbols(text), self.emotion)
        return symbols

    def __getattr__(self, name: str) -> Any:
        if name == "frontend":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.frontend, name)


def install_emotion_frontend(pipe: Any) -> EmotionFrontend | None:
    """Put an EmotionFrontend in front of the pipeline model's frontend; None if the pipeline has none to wrap."""
    model = getattr(pipe, "model", None)
    frontend = getattr(model, "frontend", None)
    if isinstance(frontend, EmotionFrontend):
        return frontend
    if frontend is None or not hasattr(frontend, "gen_tacotron_symbols"):
        return None
    model.frontend = EmotionFrontend(frontend)
    return model.frontend


def encodable_emotions(pipe: Any, voice: str, emotions: tuple[str, ...]) -> tuple[str, ...]:
    """Keep the emotions the voice's linguistic-unit table can encode; all of them if the pipeline does not expose it."""
    voices = getattr(getattr(pipe, "model", None), "voices", None)
    ling_unit = getattr(voices.get(voice), "ling_unit", None) if isinstance(voices, dict) else None
    if ling_unit is None:
        return emotions
    table = getattr(ling_unit, "_emo_category_to_id", None)  # KanTtsLinguisticUnit builds it only for emo_category
    if table is None:
        return (NEUTRAL,)
    return tuple(e for e in emotions if EMOTION_PREFIX + e in table)
