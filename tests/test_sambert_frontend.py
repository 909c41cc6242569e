"""The ttsfrd-free frontend: valid symbols for a broad sentence set, tone sandhi, polyphones, erhua, letters."""
from __future__ import annotations

import pytest

from app.engines.sambert.frontend import SambertFrontend
from app.engines.sambert.pinyin import syllable_phones
from app.engines.sambert.symbols import (
    DEFAULT_PHONES, DEFAULT_TONES, EMOTION_TYPES, SYLLABLE_FLAGS, WORD_SEGMENTS, SymbolTables, with_specials,
)

TABLES = SymbolTables(
    phones=with_specials(DEFAULT_PHONES, True), tones=with_specials(DEFAULT_TONES, True),
    syllable_flags=with_specials(SYLLABLE_FLAGS, True), word_segments=with_specials(WORD_SEGMENTS, True),
    emotions=with_specials(EMOTION_TYPES, True), speakers=with_specials(("F7",), True),
)
SENTENCES = [
    "今天北京天气怎么样？",
    "2024年3月15日，气温25.5度，湿度百分之八十。",
    "他的电话是13800138000，房间号是0705。",
    "我们去银行取钱，然后一起行走在长长的街上。",
    "这个重要的会议重新开始了，大家都很快乐地听音乐。",
    "一个人不去，一起去吧，不对，不是这样。",
    "花儿开了，女儿在门口儿玩，小孩儿一会儿就回来。",
    "我用GPU和CPU跑AI模型，效果OK。",
    "Hello world!",
    "《红楼梦》是“四大名著”之一——你读过吗？",
    "嗯，呣，哦……好吧。",
    "中华人民共和国成立于一九四九年十月一日，" * 12,
]


@pytest.fixture(scope="module")
def frontend():
    return SambertFrontend(TABLES)


def phones_and_tones(symbols: str) -> list[tuple[str, str]]:
    return [tuple(tok.strip("{}").split("$")[:2]) for tok in symbols.split()]


@pytest.mark.parametrize("text", SENTENCES)
def test_every_symbol_is_in_the_tables(frontend, text):
    symbols = frontend.symbols(text, "emotion_happy", "F7")
    assert symbols, text
    assert TABLES.missing(symbols) == []
    ids = TABLES.encode(symbols)
    assert ids.shape[1] == 6 and (ids[:, 4] == TABLES.emotions.index("emotion_happy")).all()
    assert symbols.endswith("{#4$tone_none$s_none$word_none$emotion_happy$F7}")


def test_word_and_syllable_flags_follow_kantts_rules(frontend):
    tokens = [t.strip("{}").split("$") for t in frontend.symbols("你好。").split()]
    assert [t[0] for t in tokens] == ["n_c", "i_c", "h_c", "ao_c", "#4"]
    assert [t[2] for t in tokens] == ["s_begin", "s_end", "s_begin", "s_end", "s_none"]
    assert [t[3] for t in tokens] == ["word_begin", "word_middle", "word_middle", "word_end", "word_none"]
    assert tokens[0][1] == "tone2"  # 3-3 sandhi: ni3 hao3 -> ni2 hao3


def test_yi_and_bu_sandhi(frontend):
    pairs = phones_and_tones(frontend.symbols("一个不是"))
    tones = [tone for phone, tone in pairs if phone in ("i_c", "u_c")]
    assert tones[:2] == ["tone2", "tone2"]  # yi2 ge4, bu2 shi4


def test_polyphones_follow_the_word(frontend):
    hang = phones_and_tones(frontend.symbols("银行"))
    xing = phones_and_tones(frontend.symbols("行走"))
    assert ("ang_c", "tone2") in hang and ("h_c", "tone2") in hang
    assert ("xx_c", "tone2") in xing and ("ing_c", "tone2") in xing


def test_erhua_merges_into_the_previous_final(frontend):
    pairs = phones_and_tones(frontend.symbols("花儿"))
    assert pairs[:2] == [("h_c", "tone1"), ("uar_c", "tone1")]
    assert ("er_c", "tone2") in phones_and_tones(frontend.symbols("女儿"))  # a real syllable, not erhua


def test_erhua_falls_back_when_the_voice_lacks_rhotic_finals():
    plain = [p for p in DEFAULT_PHONES if not p.endswith("r_c") or p == "er_c"]
    tables = SymbolTables(**{**TABLES.__dict__, "phones": with_specials(tuple(plain), True)})
    symbols = SambertFrontend(tables).symbols("花儿")
    assert tables.missing(symbols) == [] and "ua_c" in symbols


def test_prosodic_breaks(frontend):
    marks = [t for t in frontend.symbols("今天天气很好，我们出去散步吧。").split() if t.startswith("{#")]
    assert marks[-1].startswith("{#4") and any(m.startswith("{#3") for m in marks)


def test_nothing_speakable_gives_empty_symbols(frontend):
    assert frontend.symbols("，。！？……") == ""
    assert frontend.symbols("   ") == ""


@pytest.mark.parametrize("digits, spoken", [("0", "零"), ("15", "十五"), ("101", "一百零一"), ("10010", "一万零一十"),
                                            ("100000001", "一亿零一"), ("3.05", "三点零五"), ("房间0705", "房间零七零五"),
                                            ("2个人", "两个人"), ("13800138000", "幺三八零零幺三八零零零")])
def test_numbers_are_spoken_as_app_text_reads_them(frontend, digits, spoken):
    """app.text is the one number reader: the frontend speaks digits exactly as their normalised hanzi."""
    from app.text import normalize

    assert normalize(digits) == spoken
    assert frontend.symbols(digits) == frontend.symbols(spoken) != ""


@pytest.mark.parametrize("syllable, phones", [("zhuang", ("zh_c", "uang_c")), ("a", ("ga", "a_c")), ("ou", ("go", "ou_c")),
                                              ("er", ("ge", "er_c")), ("yu", ("y_c", "v_c")), ("ya", ("y_c", "a_c")),
                                              ("wei", ("w_c", "ei_c")), ("xue", ("xx_c", "ve_c")), ("jun", ("j_c", "vn_c")),
                                              ("lv", ("l_c", "v_c")), ("si", ("s_c", "ii_c")), ("shi", ("sh_c", "ih_c")),
                                              ("gui", ("g_c", "uei_c")), ("liu", ("l_c", "iou_c")), ("dun", ("d_c", "uen_c"))])
def test_syllable_phones(syllable, phones):
    assert syllable_phones(syllable) == phones
