"""Linguistic symbol tables (phones, tones, flags, emotions, speakers) and symbol-string encoding."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, EOS, MASK = "_", "~", "@[MASK]"  # KAN-TTS special entries appended after every table

# KAN-TTS PinYin phone set, in its PhoneSet.xml order (ids depend on this order): Mandarin initials and finals
# with a `_c` suffix, the zero-initial pseudo-initials ga/ge/go, English phones, erhua finals, pause, breaks.
_MANDARIN = (
    "a ai an ang ao b c ch d e ei en eng er f g h i ia ian iang iao ie ih ii in ing io iong iou j k l m n o ong ou "
    "p q r s sh t u ua uai uan uang uei uen ueng uo v van ve vn xx z zh w y"
)
_ENGLISH = "aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v w y z zh"
_ERHUA = (
    "air angr anr aor ar eir engr enr iangr ianr iaor iar ier ihr iir ingr inr iongr iour ir ongr or our uair "
    "uangr uanr uar ueir uenr uor ur vanr ver vnr vr"
)
DEFAULT_PHONES: tuple[str, ...] = (
    tuple(p + "_c" for p in _MANDARIN.split())
    + ("ga", "ge", "go")
    + tuple(_ENGLISH.split())
    + tuple(p + "_c" for p in _ERHUA.split())
    + ("pau", "#1", "#2", "#3", "#4")
)
# KAN-TTS tonelist.txt order (its blank line is tone_none); 5 is the neutral tone.
DEFAULT_TONES = ("tone1", "tone_none", "tone4", "tone2", "tone3", "tone5", "tone0")
SYLLABLE_FLAGS = ("s_begin", "s_end", "s_none", "s_both", "s_middle")
WORD_SEGMENTS = ("word_begin", "word_end", "word_middle", "word_both", "word_none")
EMOTION_TYPES: tuple[str, ...] = (
    "emotion_none", "emotion_neutral", "emotion_angry", "emotion_disgust", "emotion_fear", "emotion_happy",
    "emotion_sad", "emotion_surprise", "emotion_calm", "emotion_gentle", "emotion_relax", "emotion_lyrical",
    "emotion_serious", "emotion_disgruntled", "emotion_satisfied", "emotion_disappointed", "emotion_excited",
    "emotion_anxiety", "emotion_jealousy", "emotion_hate", "emotion_pity", "emotion_pleasure", "emotion_arousal",
    "emotion_dominance",
) + tuple(f"emotion_placeholder{i}" for i in range(1, 10))


def with_specials(names: tuple[str, ...], has_mask: bool) -> tuple[str, ...]:
    """A table as KAN-TTS builds it: entries, then pad, end-of-sequence and (optionally) mask."""
    return names + (PAD, EOS) + ((MASK,) if has_mask else ())


@dataclass(frozen=True)
class SymbolTables:
    """One voice's six id tables; ids are positions, exactly as the checkpoint was trained with."""

    phones: tuple[str, ...]  # phone names without KAN-TTS's "@" prefix, specials included
    tones: tuple[str, ...]  # tone1..tone5, tone0, tone_none, specials
    syllable_flags: tuple[str, ...]  # s_begin, s_end, ..., specials
    word_segments: tuple[str, ...]  # word_begin, word_end, ..., specials
    emotions: tuple[str, ...]  # emotion_none, emotion_neutral, ..., specials
    speakers: tuple[str, ...]  # speaker_list entries, specials

    def columns(self) -> tuple[tuple[str, ...], ...]:
        """Tables in symbol-field order: phone, tone, syllable flag, word flag, emotion, speaker."""
        return (self.phones, self.tones, self.syllable_flags, self.word_segments, self.emotions, self.speakers)

    def missing(self, symbols: str) -> list[str]:
        """Fields of a symbol string that are absent from these tables (empty when all are known)."""
        known = [set(col) for col in self.columns()]
        bad = []
        for token in symbols.split():
            parts = token.strip("{}").split("$")
            if len(parts) != 6:
                bad.append(token)
                continue
            bad += [p for p, table in zip(parts, known) if p not in table]
        return bad

    def encode(self, symbols: str) -> np.ndarray:
        """`{phone$tone$syl$word$emotion$speaker} ...` -> (L, 6) int64 ids; unknown entries raise ValueError."""
        index = [{name: i for i, name in enumerate(col)} for col in self.columns()]
        rows = []
        for token in symbols.split():
            parts = token.strip("{}").split("$")
            if len(parts) != 6:
                raise ValueError(f"symbol {token!r} must have 6 $-separated fields")
            try:
                rows.append([table[p] for p, table in zip(parts, index)])
            except KeyError as err:
                raise ValueError(f"symbol {token!r}: {err.args[0]!r} is not in this voice's tables") from None
        if not rows:
            raise ValueError("empty symbol sequence")
        return np.asarray(rows, dtype=np.int64)
