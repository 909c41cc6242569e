"""Which emotions a Sambert voice offers: the one rule both Sambert engines use.

A Sambert folder in ModelScope's current layout does not list the emotions a voice was trained on: KAN-TTS builds
every voice's emotion table from one fixed global list of categories (kantts/utils/ling_unit/emotion_types.py, read
by KanTtsLinguisticUnit.build in ling_unit.py), so the table says what can be encoded, not what was learnt. So:
1. emotions given explicitly for a voice (`--emotions voice=happy,sad`) win;
2. else an older folder's own table (dict/emo_category_dict.txt, when it is not the global list) is the list;
3. else a published voice offers what its model card documents (PUBLISHED below, each with its source);
4. else the voice offers neutral only, with a note saying how to tell it more.
Neutral is always offered, first: it is what every KAN-TTS frontend writes on pronounced units.
"""
from __future__ import annotations

from typing import Iterable

from app.engines.base import NEUTRAL
from app.engines.sambert.symbols import EMOTION_TYPES

PREFIX = "emotion_"  # KAN-TTS spells categories emotion_<name>
# Categories a user may name: KAN-TTS's global list without emotion_none (prosodic breaks) and the unused placeholders.
CATEGORIES: tuple[str, ...] = tuple(
    e.removeprefix(PREFIX) for e in EMOTION_TYPES if e != "emotion_none" and "placeholder" not in e)

# Each published emotional voice's categories, as its ModelScope model card states them ("多情感标签: <voice>支持如下
# 情感: ..."). The cards were read in stored copies (tencentmusic/cube-studio, aihub/modelscope/<model>/README.md);
# the same voice names are the four voices of damo/speech_sambert-hifigan_tts_zh-cn_16k, whose card lists no per-voice
# emotions but scores all four on angry, fear, happy, hate, neutral, sad, surprise (its MOS table).
CARD = "https://modelscope.cn/models/damo/speech_sambert-hifigan_tts_{}_zh-cn_16k/summary"
PUBLISHED: dict[str, tuple[tuple[str, ...], str]] = {
    "zhitian_emo": (("neutral", "happy", "angry", "sad", "fear", "hate", "surprise"), CARD.format("zhitian_emo")),
    "zhiyan_emo": (("neutral", "happy", "angry", "sad", "fear", "hate", "surprise", "arousal"), CARD.format("zhiyan_emo")),
    # Its own card says calm and serious where the four-voice card's MOS table has hate and surprise; the card
    # that names the voice's emotions is followed (override with --emotions zhizhe_emo=... if yours differs).
    "zhizhe_emo": (("neutral", "happy", "angry", "sad", "fear", "calm", "serious"), CARD.format("zhizhe_emo")),
    "zhibei_emo": (("neutral", "happy", "angry", "sad", "fear", "hate", "surprise"), CARD.format("zhibei_emo")),
}


def parse_emotions_option(values: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`voice=happy,sad` items (repeatable, or `;`-separated) -> ((voice, (happy, sad)), ...); ValueError names a bad one."""
    out: dict[str, tuple[str, ...]] = {}
    for value in values:
        for item in (part.strip() for part in value.split(";")):
            if not item:
                continue
            voice, sep, listed = item.partition("=")
            voice = voice.strip()
            names = tuple(dict.fromkeys(n.strip().removeprefix(PREFIX) for n in listed.split(",") if n.strip()))
            if not sep or not voice or not names:
                raise ValueError(f"--emotions {item!r} must look like VOICE=EMOTION[,EMOTION...], e.g. zhitian_emo=happy,sad")
            unknown = [n for n in names if n not in CATEGORIES]
            if unknown:
                raise ValueError(f"--emotions {item!r}: {', '.join(map(repr, unknown))} is not a KAN-TTS emotion category; "
                                 f"choose from: {', '.join(CATEGORIES)}")
            out[voice] = names
    return tuple(out.items())


def offered_emotions(voice: str, table: tuple[str, ...], explicit: tuple[str, ...] | None,
                     table_is_the_voices_own: bool) -> tuple[tuple[str, ...], str | None]:
    """The voice's emotions (neutral first) by the rule above, and a note when only neutral is known.

    table: the categories the voice's emotion table can encode (bare names). Raises ValueError for an explicit
    emotion the table cannot encode.
    """
    if explicit is not None:
        missing = [e for e in explicit if e not in table]
        if missing:
            raise ValueError(f"--emotions {voice}=...: the voice's emotion table has no {', '.join(map(repr, missing))}; "
                             f"it has: {', '.join(table)}")
        return _neutral_first(explicit), None
    if table_is_the_voices_own:
        return _neutral_first(table), None
    if voice in PUBLISHED:
        return _neutral_first(e for e in PUBLISHED[voice][0] if e in table), None
    return (NEUTRAL,), (f"voice {voice!r}: its folder does not say which emotions it was trained on, so it offers "
                        f"neutral only; if it was trained on more, start with --emotions {voice}=happy,sad (its categories)")


def table_categories(table: Iterable[str]) -> tuple[str, ...]:
    """Bare category names an emotion table can encode (emotion_none, placeholders and specials dropped)."""
    return tuple(e.removeprefix(PREFIX) for e in table
                 if e.startswith(PREFIX) and e != "emotion_none" and "placeholder" not in e)


def _neutral_first(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([NEUTRAL, *names]))

