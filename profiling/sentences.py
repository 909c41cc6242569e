"""The sentence lists the tests and the GPU suite both speak, read from one data file (profiling/sentences_zh.json).

They are data, not test code, so `profiling/bench/gpu_prepare.sh` can export their symbol ids without pytest.
"""
from __future__ import annotations

import json
from pathlib import Path

SENTENCES_FILE = Path(__file__).with_name("sentences_zh.json")


def sentence_list(name: str) -> list[str]:
    """One named list: "engine" (8 sentences of mixed length), "phrases" (32 short ones), "cuda_texts" (4)."""
    lists = json.loads(SENTENCES_FILE.read_text(encoding="utf8"))
    if name not in lists or name.startswith("_"):
        raise KeyError(f"no sentence list {name!r} in {SENTENCES_FILE}; it has {', '.join(k for k in lists if k[0] != '_')}")
    return list(lists[name])


def all_sentences() -> list[str]:
    """Every list's texts, in file order (what the GPU box needs symbol ids for)."""
    lists = json.loads(SENTENCES_FILE.read_text(encoding="utf8"))
    return [text for name, texts in lists.items() if not name.startswith("_") for text in texts]
