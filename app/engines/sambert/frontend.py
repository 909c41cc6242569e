"""Chinese text -> KAN-TTS symbol strings without ttsfrd: jieba words, pypinyin tones, prosodic breaks."""
from __future__ import annotations

import re
from dataclasses import dataclass

from app.engines.sambert.pinyin import split_tone, syllable_phones
from app.text import normalize
from app.engines.sambert.symbols import DEFAULT_PHONES, SymbolTables

PAUSE_MARKS = set("，,、；;：:—–…")  # a pause inside the sentence: intonation-phrase break (#3)
END_MARKS = set("。.！!？?")  # sentence end (#4), or #3 when more text follows
MAX_GROUP_SYLLABLES = 4  # longest prosodic word built by merging short lexical words
PHRASE_SYLLABLES = 7  # after this many syllables without a break, a word boundary becomes a phrase break (#2)
LETTERS = {  # Latin letters spelled with Mandarin syllables (keeps every phone inside the Mandarin set)
    "a": "ei1", "b": "bi4", "c": "sei4", "d": "di4", "e": "yi4", "f": "ai2 fu5", "g": "ji4", "h": "ei1 qi1",
    "i": "ai4", "j": "jie4", "k": "kei4", "l": "ai2 le5", "m": "ai2 mu5", "n": "en1", "o": "ou1", "p": "pi4",
    "q": "qiu1", "r": "a4", "s": "ai2 si1", "t": "ti4", "u": "you1", "v": "wei1", "w": "da2 bu5 liu5",
    "x": "ai2 ke4 si1", "y": "wai1", "z": "zei4",
}
ERHUA_EXCEPTIONS = {  # words whose final 儿 is a full syllable, not a rhotic ending
    "儿", "女儿", "儿子", "婴儿", "幼儿", "孤儿", "健儿", "男儿", "胎儿", "患儿", "宠儿", "混血儿", "新生儿", "少儿",
    "儿童", "孩儿", "侄儿", "寄儿", "养儿", "育儿", "托儿", "弃儿", "病儿", "犬儿", "妻儿", "小儿",
}
# app.text.normalize (the one number reader) leaves hanzi, Latin letters and punctuation: no digits reach here.
_TOKEN = re.compile(r"(?P<han>[\u3400-\u9fff]+)|(?P<latin>[A-Za-z]+)|(?P<mark>[^\s\w])|\s+")


@dataclass(frozen=True)
class Syllable:
    """One spoken syllable."""

    phones: tuple[str, ...]  # KAN-TTS phones, e.g. ("zh_c", "ong_c")
    tone: int  # 1-4, 5 = neutral


class SambertFrontend:
    """Normalised Chinese sentence -> symbol string for one voice's tables (never a symbol they lack)."""

    def __init__(self, tables: SymbolTables | None = None):
        self.phones = set(tables.phones) if tables is not None else set(DEFAULT_PHONES)
        import jieba  # lazy: only the frontend needs jieba and pypinyin
        from pypinyin import Style, lazy_pinyin

        jieba.setLogLevel(60)
        self._cut = jieba.lcut
        self._pinyin = lambda words: lazy_pinyin(words, style=Style.TONE3, neutral_tone_with_five=True,
                                                 tone_sandhi=True, errors=lambda chars: [None] * len(chars))

    def _syllable(self, pinyin: str, erhua: bool = False) -> Syllable | None:
        base, tone = split_tone(pinyin)
        try:
            phones = syllable_phones(base, erhua=erhua)
        except ValueError:
            return None
        if erhua and not set(phones) <= self.phones:  # a phone set without erhua finals: plain final
            phones = syllable_phones(base)
        return Syllable(phones, tone) if set(phones) <= self.phones else None

    def _han_words(self, text: str) -> list[list[Syllable]]:
        words = self._cut(text)
        out = []
        for word, readings in zip(words, (self._pinyin([w]) for w in words)):
            syllables: list[Syllable] = []
            for i, (char, reading) in enumerate(zip(word, readings)):
                erhua = char == "儿" and i == len(word) - 1 and i > 0 and word not in ERHUA_EXCEPTIONS and syllables
                if erhua:  # 花儿 -> huar: the previous syllable takes the rhotic final
                    prev = syllables[-1]
                    base = self._previous_base(readings[i - 1])
                    merged = self._syllable(f"{base}{prev.tone}", erhua=True) if base else None
                    syllables[-1] = merged or prev
                    continue
                syllable = self._syllable(reading) if reading else None
                if syllable:
                    syllables.append(syllable)
            if syllables:
                out.append(syllables)
        return out

    @staticmethod
    def _previous_base(reading: str | None) -> str | None:
        return split_tone(reading)[0] if reading else None

    def words(self, text: str) -> list[tuple[list[Syllable], str | None]]:
        """Lexical words with the punctuation break that follows each ('#3', '#4' or None)."""
        text = normalize(text)  # the service normalises first; this covers direct callers (normalising twice is a no-op)
        words: list[tuple[list[Syllable], str | None]] = []
        for match in _TOKEN.finditer(text):
            kind = match.lastgroup
            if kind == "han":
                words += [(w, None) for w in self._han_words(match.group())]
            elif kind == "latin":
                letters = [self._syllable(p) for ch in match.group().lower() for p in LETTERS[ch].split()]
                if all(letters):
                    words.append((letters, None))
            elif kind == "mark" and words and (match.group() in PAUSE_MARKS or match.group() in END_MARKS):
                words[-1] = (words[-1][0], "#3")
        if words:
            words[-1] = (words[-1][0], "#4")
        return words

    def prosodic_words(self, text: str) -> list[tuple[list[Syllable], str]]:
        """Merge short lexical words into prosodic words; attach #1/#2/#3/#4 breaks."""
        groups: list[tuple[list[Syllable], str]] = []
        current: list[Syllable] = []
        since_break = 0
        for syllables, mark in self.words(text):
            mergeable = len(current) + len(syllables) <= MAX_GROUP_SYLLABLES and (len(current) < 2 or len(syllables) < 2)
            if current and not mergeable:
                since_break += len(current)
                groups.append((current, "#2" if since_break >= PHRASE_SYLLABLES else "#1"))
                since_break = 0 if since_break >= PHRASE_SYLLABLES else since_break
                current = []
            current = current + syllables
            if mark:
                groups.append((current, mark))
                current, since_break = [], 0
        return groups

    def symbols(self, text: str, emotion: str = "emotion_neutral", speaker: str = "F7") -> str:
        """Sentence -> '{phone$toneN$s_flag$word_flag$emotion$speaker} ...'; '' when nothing is speakable."""
        tail = f"${emotion}${speaker}}}"
        out = []
        for syllables, mark in self.prosodic_words(text):
            phones = [(p, s.tone, i, len(s.phones)) for s in syllables for i, p in enumerate(s.phones)]
            for k, (phone, tone, i, n) in enumerate(phones):
                syl = "s_both" if n == 1 else "s_begin" if i == 0 else "s_end" if i == n - 1 else "s_middle"
                word = ("word_both" if len(phones) == 1 else "word_begin" if k == 0
                        else "word_end" if k == len(phones) - 1 else "word_middle")
                out.append(f"{{{phone}$tone{tone}${syl}${word}{tail}")
            out.append(f"{{{mark}$tone_none$s_none$word_none{tail}")
        return " ".join(out)


class PrecomputedFrontend:
    """SambertFrontend's output read from a JSON file of {sentence: symbols} (written by `export_symbols` where jieba
    and pypinyin are installed), for a machine without them (the GPU suite's box). Symbols are stored with the default
    emotion and speaker and re-tagged per call; a sentence not in the file raises KeyError naming it."""

    DEFAULT_TAIL = "$emotion_neutral$F7}"

    def __init__(self, path: str, tables: SymbolTables | None = None) -> None:
        import json

        self.path = path
        with open(path, encoding="utf8") as f:
            self._table = json.load(f)

    def symbols(self, text: str, emotion: str = "emotion_neutral", speaker: str = "F7") -> str:
        if text not in self._table:
            raise KeyError(f"{text!r} is not in {self.path}; export it on a machine with jieba and pypinyin")
        return self._table[text].replace(self.DEFAULT_TAIL, f"${emotion}${speaker}}}")


def export_symbols(path: str, sentences) -> int:
    """Write {sentence: symbols} (default phone set, emotion and speaker) for PrecomputedFrontend; return how many."""
    import json

    frontend = SambertFrontend()
    table = {s: frontend.symbols(s) for s in sorted(set(sentences))}
    with open(path, "w", encoding="utf8") as f:
        json.dump(table, f, ensure_ascii=False)
    return len(table)
