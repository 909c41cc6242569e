"""Text normalisation and sentence splitting: exact readings, split invariants, one pass through phkit."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.text import normalize, split_sentences

REPO = Path(__file__).resolve().parents[1]


def cases(*pairs):
    """Table rows with the input as the test id, so a failure names the text."""
    return pytest.mark.parametrize("raw, expected", [pytest.param(a, b, id=a) for a, b in pairs])


@cases(
    ("ＡＢＣ１２３", "A B C一百二十三"),
    ("Ｈｅｌｌｏ，世界！", "H E L L O，世界！"),
    ("你好,世界!", "你好，世界！"),
    ("真的吗?", "真的吗？"),
    ("注意:明天;后天.", "注意：明天；后天。"),
    ("好吗？！", "好吗？"),
    ("！！你好", "你好"),
    ("“你好”，他说", "你好，他说"),
    ("《三体》很好看", "三体很好看"),
    ("张三（男）说。", "张三，男，说。"),
    ("他来了（笑）。", "他来了，笑。"),
    ("【重要】通知", "重要，通知"),
    ("你好——世界", "你好，世界"),
    ("等等...", "等等，"),
    ("你好😀👍", "你好"),
    ("迈克尔·杰克逊", "迈克尔杰克逊"),
    ("你\u200b好\x07", "你好"),
    ("  你好   世界  ", "你好世界"),
    ("你好\r\n\r\n\n世界", "你好\n世界"),
    ("#话题# @用户", "话题用户"),
    ("3+5=8", "三加五等于八"),
    ("3×4", "三乘四"),
)
def test_characters_and_punctuation(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("2024年3月5日", "二零二四年三月五日"),
    ("2024-03-05", "二零二四年三月五日"),
    ("2024/3/5", "二零二四年三月五日"),
    ("2024.3.5", "二零二四年三月五日"),
    ("2024年", "二零二四年"),
    ("2000年", "二零零零年"),
    ("1990年代", "一九九零年代"),
    ("2020-2024年", "二零二零到二零二四年"),
    ("5000年历史", "五千年历史"),
    ("3月5日", "三月五日"),
    ("2月2号", "二月二号"),
    ("12-15日", "十二到十五日"),
    ("1990s", "一九九零年代"),
)
def test_dates(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("14:30", "十四点三十分"),
    ("14：30", "十四点三十分"),
    ("8:05:10", "八点零五分十秒"),
    ("12:00:05", "十二点零分零五秒"),
    ("8:00", "八点"),
    ("0:30", "零点三十分"),
    ("2:30", "两点三十分"),
    ("下午3点", "下午三点"),
    ("下午2点", "下午两点"),
    ("9:00-17:30", "九点到十七点三十分"),
    ("比分3:2", "比分三比二"),
)
def test_times_and_ratios(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("30%", "百分之三十"),
    ("12.5%", "百分之十二点五"),
    ("-3%", "负百分之三"),
    ("100%", "百分之一百"),
    ("0.01%", "百分之零点零一"),
    ("30%-50%", "百分之三十到百分之五十"),
    ("10-20%", "百分之十到百分之二十"),
    ("5‰", "千分之五"),
)
def test_percentages(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("0", "零"),
    ("10", "十"),
    ("15", "十五"),
    ("110", "一百一十"),
    ("101", "一百零一"),
    ("1001", "一千零一"),
    ("10050", "一万零五十"),
    ("10010", "一万零一十"),
    ("100000", "十万"),
    ("1000000", "一百万"),
    ("100000000", "一亿"),
    ("100010000", "一亿零一万"),
    ("105000000", "一亿零五百万"),
    ("1500000000", "十五亿"),
    ("123456780000", "一千二百三十四亿五千六百七十八万"),
    ("1,234,567", "一百二十三万四千五百六十七"),
    ("3.14", "三点一四"),
    ("0.5", "零点五"),
    ("12.50", "十二点五零"),
    ("-5", "负五"),
    ("-3.5", "负三点五"),
    ("温度为-2", "温度为负二"),
    ("1.5万", "一点五万"),
    ("1亿2千万", "一亿两千万"),
    ("v1.2.3", "V一点二点三"),
    ("007", "零零七"),
    ("12345678901234567890", "一二三四五六七八九零一二三四五六七八九零"),
    ("5-3=2", "五减三等于二"),
)
def test_numbers(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("2个", "两个"),
    ("2 个", "两个"),
    ("2天", "两天"),
    ("2年", "两年"),
    ("2万人", "两万人"),
    ("2000", "两千"),
    ("20000", "两万"),
    ("200个", "两百个"),
    ("22000", "两万二千"),
    ("2", "二"),
    ("20个", "二十个"),
    ("2.5个", "二点五个"),
    ("第2个", "第二个"),
    ("2年级", "二年级"),
    ("2号", "二号"),
    ("2月", "二月"),
)
def test_liang_and_er(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("13812345678", "幺三八幺二三四五六七八"),
    ("138-1234-5678", "幺三八幺二三四五六七八"),
    ("+86 138 1234 5678", "加八六幺三八幺二三四五六七八"),  # the country code is said, not dropped
    ("+86-138-1234-5678", "加八六幺三八幺二三四五六七八"),
    ("+8613812345678", "加八六幺三八幺二三四五六七八"),
    ("86 13812345678", "八六幺三八幺二三四五六七八"),
    ("+86 10 6234 5678", "加八六幺零六二三四五六七八"),
    ("+1 650 253 0000", "加幺六五零二五三零零零零"),
    ("010-62345678", "零幺零六二三四五六七八"),
    ("400-800-8888", "四零零八零零八八八八"),
)
def test_phone_numbers_digit_by_digit(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("3/4", "四分之三"),
    ("1/2", "二分之一"),
    ("-1/2", "负二分之一"),
    ("½", "二分之一"),
    ("3-5个", "三到五个"),
    ("2-3个", "两到三个"),
    ("3~5天", "三到五天"),
    ("3～5天", "三到五天"),
    ("第3-5章", "第三到五章"),
    ("4月1日-4月3日", "四月一日到四月三日"),  # a dash between dates is a range, not a minus
    ("4月1日~4月3日", "四月一日到四月三日"),
    ("4月1日 — 4月3日", "四月一日到四月三日"),
    ("4月1日至4月3日", "四月一日至四月三日"),
    ("3月5日-7日", "三月五日到七日"),
    ("2024年4月1日-2024年4月3日", "二零二四年四月一日到二零二四年四月三日"),
    ("2023年-2024年", "二零二三年到二零二四年"),
    ("第3名", "第三名"),
    ("第1,000名", "第一千名"),
    ("第2", "第二"),
    ("No.1", "第一"),
)
def test_fractions_ranges_ordinals(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("5km", "五公里"),
    ("5 km", "五公里"),
    ("2kg", "两公斤"),
    ("2.5kg", "二点五公斤"),
    ("170cm", "一百七十厘米"),
    ("3mm", "三毫米"),
    ("100m", "一百米"),
    ("500g", "五百克"),
    ("100m²", "一百平方米"),
    ("25℃", "二十五摄氏度"),
    ("25°C", "二十五摄氏度"),
    ("-5°C", "零下五摄氏度"),
    ("-3-5℃", "零下三摄氏度到五摄氏度"),
    ("2℃", "二摄氏度"),
    ("100℉", "一百华氏度"),
    ("360°", "三百六十度"),
    ("¥100", "一百元"),
    ("￥12.50", "十二点五元"),
    ("￥12.50元", "十二点五元"),  # the unit written after the amount is said once
    ("¥100元", "一百元"),
    ("US$3.5美元", "三点五美元"),
    ("12.50元", "十二点五元"),  # an amount in 元 is money: no trailing zero
    ("-3.50元", "负三点五元"),
    ("12.50块", "十二点五块"),
    ("100万元", "一百万元"),
    ("$5", "五美元"),
    ("$2", "两美元"),
    ("$1,299.99", "一千二百九十九点九九美元"),
    ("100元/kg", "一百元每公斤"),
    ("5元/斤", "五元每斤"),
    ("16GB", "十六吉字节"),
    ("512MB", "五百一十二兆字节"),
    ("2h", "两小时"),
    ("30min", "三十分钟"),
    ("10s", "十秒"),
    ("200ms", "两百毫秒"),
    ("60km/h", "六十公里每小时"),
    ("3-5km", "三到五公里"),
    ("5G网络", "五G网络"),
    ("iPhone 5s", "I P H O N E五S"),
)
def test_units_and_currency(raw, expected):
    assert normalize(raw) == expected


@cases(
    ("AI", "A I"),
    ("iPhone", "I P H O N E"),
    ("我用iPhone 15", "我用I P H O N E十五"),
    ("Hello   World", "H E L L O W O R L D"),
    ("café", "C A F E"),
    ("COVID-19", "C O V I D十九"),
    ("www.baidu.com", "W W W点B A I D U点C O M"),
    ("α粒子", "粒子"),
)
def test_latin_letters_are_spelt(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", "😀", "%", "“”《》", "——", "……"])
def test_nothing_to_say_normalises_to_empty(raw):
    assert normalize(raw) == ""


@pytest.mark.parametrize("raw", [
    "2024年3月5日下午3:30，气温-3℃。", "我用iPhone 15拍了2张照片（共1.5GB）！", "你好\n\n世界", "A B，C。",
])
def test_normalize_is_idempotent(raw):
    once = normalize(raw)
    assert normalize(once) == once


@pytest.mark.parametrize("raw", [
    "电话13812345678，¥1,299，-3.5%，3/4，3-5个，第2名，2024-03-05 14:30:05，5km，12.5%，1,234,567，²³，①②",
])
def test_no_digits_or_symbols_survive(raw):
    assert re.fullmatch(r"[\u4e00-\u9fffA-Z ，。！？；：、\n]*", normalize(raw))


@pytest.mark.parametrize("raw, expected", [
    ("你好", True), ("A", True), ("3", True), ("ＡＢ", True), ("é", True), ("%", False),
    ("😀", False), ("。，！", False), ("", False), ("   ", False), ("——", False),
])
def test_something_to_say_survives_normalisation_and_splitting(raw, expected):
    assert bool(split_sentences(normalize(raw))) is expected


@pytest.mark.parametrize("text, expected", [
    ("你好。今天天气很好！我们走吧？", ["你好。", "今天天气很好！", "我们走吧？"]),
    ("第一句；第二句。", ["第一句；", "第二句。"]),
    ("第一行\n第二行", ["第一行", "第二行"]),
    ("没有标点", ["没有标点"]),
    ("好！！！真的？", ["好！！！", "真的？"]),
    ("你好。。。", ["你好。。。"]),
    ("A B。", ["A B。"]),
    ("。你好", ["你好"]),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "。。！", "，，、", "。\n？\n"])
def test_split_sentences_with_nothing_to_say_is_empty(text):
    assert split_sentences(text) == []


def test_long_sentence_splits_at_clause_marks_and_keeps_them():
    text = ("随着人工智能技术的快速发展，语音合成系统已经广泛应用于导航、客服、有声读物和辅助阅读等多个领域，"
            "并且在自然度和表现力方面取得了显著的进步。")
    pieces = split_sentences(text, max_chars=40)
    assert pieces == ["随着人工智能技术的快速发展，语音合成系统已经广泛应用于导航、客服、",
                      "有声读物和辅助阅读等多个领域，并且在自然度和表现力方面取得了显著的进步。"]


@pytest.mark.parametrize("max_chars", [1, 5, 10, 20])
def test_text_without_punctuation_is_cut_by_length(max_chars):
    text = "我们的目标是让每一个人都能够在任何时间任何地点听到自然流畅的语音" + "啊" * 50
    pieces = split_sentences(text, max_chars=max_chars)
    assert all(1 <= len(p) <= max_chars for p in pieces)
    assert "".join(pieces) == text


def test_cuts_fall_between_spelt_letters():
    pieces = split_sentences(normalize("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), max_chars=10)
    assert pieces == ["A B C D E", "F G H I J", "K L M N O", "P Q R S T", "U V W X Y", "Z"]


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError, match="max_chars=0"):
        split_sentences("你好。", max_chars=0)


def test_thousand_character_paragraph():
    raw = ("2024年3月5日下午3:30，北京的气温是-3℃到5℃，湿度45%。我用iPhone 15拍了2张照片（共1.5GB），"
           "花了¥1,299！请拨打13812345678咨询，或访问www.example.com了解第3期的详细内容；"
           "大约有3/4的人、3-5个团队参加了这次为期2天的活动\n")
    text = normalize(raw * 8)
    assert len(text) >= 1000
    pieces = split_sentences(text, max_chars=40)
    assert all(0 < len(p) <= 40 for p in pieces)
    assert "".join(pieces) == text.replace("\n", "")  # nothing lost, order kept
    assert pieces[:2] == ["二零二四年三月五日下午三点三十分，北京的气温是零下三摄氏度到五摄氏度，", "湿度百分之四十五。"]


def test_import_stays_light():
    code = "import sys, app.text; print(sorted({'jieba', 'pypinyin', 'phkit', 'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_phkit_frontend_reads_every_symbol():
    chinese = pytest.importorskip("phkit.chinese")
    raw = ("2024年3月5日下午3:30，气温-3℃，湿度45%。我用iPhone 15拍了2张照片（共1.5GB），花了¥1,299！"
           "请拨打13812345678或010-62345678。“第3名”跑了5km，用时2h 30min；比分3:2，约有3/4的人、3-5个队伍。")
    sentences = split_sentences(normalize(raw))
    assert len(sentences) == 6
    # phkit silently drops a character it has no phoneme for, leaving an empty group that
    # sequence_to_text() renders as "*"; digits and % would map to its reserved ids 0 6 7 8 9 w y.
    reserved = {chinese.symbols.index(s) for s in "w y 0 6 7 8 9".split()}
    for sentence in sentences:
        assert not re.search(r"[0-9%]", sentence)
        ids = chinese.text_to_sequence(sentence, cleaner_names="hanzi")
        assert all(0 <= i < len(chinese.symbols) for i in ids)
        assert not reserved & set(ids), sentence
        assert "*" not in chinese.sequence_to_text(ids).split(), sentence
