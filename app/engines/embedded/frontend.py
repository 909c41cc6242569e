"""Text -> phkit symbol ids for the embedded voice: phkit's own frontend, or ids exported beforehand."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
from typing import Callable, Iterable, Sequence

Frontend = Callable[[str], Sequence[int]]  # one normalised sentence -> symbol ids

# phkit symbol ids that make sound: phones, tones and letters (0-2 are pad/end/separator, 128+ punctuation).
SPOKEN_IDS = frozenset(range(3, 128)) | {138, 139}


@functools.lru_cache(maxsize=4096)  # repeated sentences (warm-up, examples, retries) skip the frontend
def text_to_ids(text: str) -> tuple[int, ...]:
    """phkit's frontend: pinyin with tone sandhi -> its 145-symbol ids (ends with end and pad symbols)."""
    from phkit.chinese import text_to_sequence  # imported lazily: ~1.5 s of dictionaries

    return tuple(text_to_sequence(text, cleaner_names="hanzi"))


def warm_phkit() -> None:
    """Load phkit's dictionaries now (it prints progress bars on first use) and quiet its segmenter's log."""
    with contextlib.redirect_stderr(io.StringIO()):
        text_to_ids("预热")
    logging.getLogger("jieba").setLevel(logging.WARNING)  # phkit's segmenter sets itself to DEBUG on import


def export_ids(path: str, sentences: Iterable[str]) -> int:
    """Write {sentence: ids} for sentences to a JSON file (for a machine without phkit); return how many."""
    table = {s: list(text_to_ids(s)) for s in sorted(set(sentences))}
    with open(path, "w", encoding="utf8") as f:
        json.dump(table, f, ensure_ascii=False)
    return len(table)


def precomputed_frontend(path: str) -> Frontend:
    """A frontend reading ids written by export_ids (no phkit needed); an unknown sentence raises KeyError."""
    with open(path, encoding="utf8") as f:
        table = json.load(f)

    def frontend(text: str) -> list[int]:
        if text not in table:
            raise KeyError(f"{text!r} is not in {path}; export it on a machine with phkit")
        return table[text]

    return frontend
