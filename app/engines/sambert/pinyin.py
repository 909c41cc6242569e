"""Pinyin syllable -> KAN-TTS Mandarin phones (initial + final with `_c` suffix), by rule, erhua included."""
from __future__ import annotations

import re

_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c", "s")
_INTERJECTIONS = {"m": "mu", "n": "en", "ng": "eng", "hm": "hen", "hng": "heng", "ê": "ei", "e^": "ei", "ea": "ei"}
_SYLLABLE = re.compile(r"^([a-zêü^]+?)(r?)([1-5])?$")


def split_tone(syllable: str) -> tuple[str, int]:
    """'hao3' -> ('hao', 3); a syllable without a digit is neutral (5)."""
    if syllable and syllable[-1].isdigit():
        return syllable[:-1], int(syllable[-1])
    return syllable, 5


def _final(initial: str, rest: str) -> str:
    if initial == "y":  # KAN-TTS keeps the written final after y/w (ya -> y a), only u is read as v
        return "v" + rest[1:] if rest.startswith("u") else rest
    if initial == "w":
        return rest
    if initial in ("j", "q", "x") and rest.startswith("u"):
        return "v" + rest[1:]
    if initial in ("zh", "ch", "sh", "r") and rest == "i":
        return "ih"
    if initial in ("z", "c", "s") and rest == "i":
        return "ii"
    if initial in ("n", "l") and rest == "ue":
        return "ve"
    return {"iu": "iou", "ui": "uei", "un": "uen"}.get(rest, rest)


def syllable_phones(syllable: str, erhua: bool = False) -> tuple[str, ...]:
    """Toneless pinyin ('zhuang', 'lv', 'er') -> ('zh_c', 'uang_c'); erhua=True gives the rhotic final ('uangr_c')."""
    syllable = syllable.lower().replace("ü", "v").replace("u:", "v")
    syllable = _INTERJECTIONS.get(syllable, syllable)
    if not syllable or not syllable.isascii() or not syllable.isalpha():
        raise ValueError(f"syllable={syllable!r} is not toneless pinyin")
    if syllable[0] in "yw":
        initial, rest = syllable[0], syllable[1:]
        initial_phone = initial + "_c"
    else:
        initial = next((i for i in _INITIALS if syllable.startswith(i) and len(syllable) > len(i)), "")
        rest = syllable[len(initial):]
        if initial:
            initial_phone = "xx_c" if initial == "x" else initial + "_c"
        else:  # zero initial: a pseudo-initial chosen by the first vowel
            initial_phone = {"a": "ga", "o": "go"}.get(rest[0], "ge")
    final = _final(initial, rest)
    if erhua and final != "er":
        final += "r"
    return initial_phone, final + "_c"
