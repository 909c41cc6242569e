"""Chinese text normalisation (numbers, dates, units, symbols) and sentence splitting.

Every engine gets the same input: hanzi, upper-case Latin letters spaced out to be spelt,
and only the punctuation ，。！？；：、 (plus newlines between paragraphs). No Arabic digits or
symbols survive normalize(), so no engine's own number reading is ever used.
Pure standard library: this module sits on the one-shot CLI path and must import fast.
"""
from __future__ import annotations

import re
import unicodedata

DEFAULT_MAX_CHARS = 40  # characters of normalised text per engine call (a spelt letter with its space costs two)
MAX_NUMBER_DIGITS = 16  # integer digits read as a number (up to 9999万亿); longer runs are read digit by digit
PHONE_ONE = "幺"  # how 1 is read inside phone numbers; set to "一" for the plain reading

SENTENCE_ENDS = "。！？；"  # split_sentences() always cuts after these (and at newlines)
CLAUSE_BREAKS = "，、：—"  # ... and after these when a sentence is longer than max_chars
PUNCTUATION = "，。！？；：、"  # the only punctuation normalize() emits

_DIGITS = "零一二三四五六七八九"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_SPEAKABLE_RE = re.compile(f"[{_CJK}A-Za-z0-9]")

# A number as written: 1,234,567.89 or 3.14 or 42 (only ASCII commas group thousands).
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
# A minus sign, not a hyphen: nothing alphanumeric just before it.
_SIGN = r"(?P<sign>(?<![0-9A-Za-z.])-)?"
_RANGE_SEP = r"\s*(?:-|~|～|–|—|至|到)\s*"

# Next word after a bare 2 that makes it 两 (两个, 两点, 两万); 二 otherwise (二月, 二号, 第二).
_LIANG_BEFORE = (
    "个", "位", "只", "条", "本", "张", "件", "次", "遍", "趟", "回", "天", "周", "岁", "人", "名", "种",
    "句", "口", "家", "台", "辆", "架", "把", "块", "份", "双", "对", "层", "步", "片", "根", "支", "首",
    "部", "场", "杯", "碗", "瓶", "盒", "包", "袋", "项", "门", "间", "座", "棵", "头", "匹", "颗", "粒",
    "斤", "倍", "点", "百", "千", "万", "亿", "小时", "分钟", "秒", "年", "元", "角", "毛", "米", "克",
    "公里", "公斤", "千克", "厘米", "毫米", "升", "平方", "立方", "美元", "欧元", "英镑", "港元",
)
_NOT_LIANG_BEFORE = ("年级",)  # 二年级

# Units written after a number: written form -> (Chinese, counts things so a bare 2 reads 两).
_UNITS = {
    "km/h": ("公里每小时", True), "m/s": ("米每秒", True), "kWh": ("千瓦时", True), "mAh": ("毫安时", True),
    "kHz": ("千赫兹", True), "MHz": ("兆赫兹", True), "GHz": ("吉赫兹", True), "Hz": ("赫兹", True),
    "TB": ("太字节", True), "GB": ("吉字节", True), "MB": ("兆字节", True), "KB": ("千字节", True),
    "kB": ("千字节", True), "kW": ("千瓦", True),
    "km": ("公里", True), "KM": ("公里", True), "Km": ("公里", True),
    "kg": ("公斤", True), "KG": ("公斤", True), "Kg": ("公斤", True),
    "cm": ("厘米", True), "CM": ("厘米", True), "mm": ("毫米", True), "mg": ("毫克", True),
    "ml": ("毫升", True), "mL": ("毫升", True), "min": ("分钟", True), "ms": ("毫秒", True),
    "m": ("米", True), "g": ("克", True), "L": ("升", True), "h": ("小时", True), "s": ("秒", True),
    "°C": ("摄氏度", False), "°F": ("华氏度", False), "°": ("度", False),
}
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_CURRENCY = {"US$": "美元", "HK$": "港元", "$": "美元", "¥": "元", "€": "欧元", "£": "英镑"}
_CURRENCY_ALT = "|".join(re.escape(c) for c in sorted(_CURRENCY, key=len, reverse=True))
_CURRENCY_WORDS = ("美元", "港元", "欧元", "英镑", "日元", "元", "块")  # written after an amount
_PER_UNITS = ("公里|公斤|千克|小时|分钟|平方米|千瓦时|斤|个|次|天|人|件|年|月|周|秒|克|米|升|台|张|只|条|本|"
              "袋|箱|瓶|盒|包|份|杯|碗|间|晚|位|吨|度|亩")

# Symbols with a reading; everything else that is not hanzi, a letter or PUNCTUATION is dropped.
_SYMBOL_WORDS = {"+": "加", "=": "等于", "×": "乘", "÷": "除以", "±": "正负", "&": "和", "〇": "零"}
_PAUSE_MARKS = "()[]{}（）【】〔〕—―─–…⋯"  # brackets and dashes read as a short pause (，)
_ASCII_PUNCT = str.maketrans({",": "，", ".": "。", "!": "！", "?": "？", ";": "；", ":": "："})
# Full-width punctuation that NFKC would turn into ASCII; kept so that "3，000" stays a list.
_KEEP_FULLWIDTH = re.compile("([，！？；：（）～])")
_PUNCT_RANK = {"。": 3, "！": 3, "？": 3, "；": 2, "：": 1, "，": 0, "、": 0}


def _digits(s: str, one: str = "一") -> str:
    """Read a digit string digit by digit: 2024 -> 二零二四."""
    return "".join(one if d == "1" else _DIGITS[int(d)] for d in s)


def _below_10k(n: int, leading: bool) -> str:
    """Read 1..9999 with 零 for inner zeros; a leading 一十 becomes 十."""
    parts, zero = [], False
    for digit, unit in ((n // 1000 % 10, "千"), (n // 100 % 10, "百"), (n // 10 % 10, "十"), (n % 10, "")):
        if digit == 0:
            zero = bool(parts)
            continue
        if zero:
            parts.append("零")
            zero = False
        parts.append(_DIGITS[digit] + unit)
    words = "".join(parts)
    return words[1:] if leading and words.startswith("一十") else words


def _int_words(n: int, leading: bool = True) -> str:
    """Read 0 <= n < 10**16 in 万/亿 groups: 100010000 -> 一亿零一万."""
    if n == 0:
        return "零"
    for base, unit in ((10**8, "亿"), (10**4, "万")):
        if n >= base:
            high, low = divmod(n, base)
            words = _int_words(high, leading) + unit
            if low:
                words += ("零" if low < base // 10 else "") + _int_words(low, leading=False)
            return words
    return _below_10k(n, leading)


def _read_int(s: str, liang: bool = False) -> str:
    """Read an integer string; liang turns 2 into 两 (两个, 两千, 两万)."""
    if (len(s) > 1 and s[0] == "0") or len(s) > MAX_NUMBER_DIGITS:
        return _digits(s)
    n = int(s)
    words = _int_words(n)
    if liang and words[0] == "二" and (n == 2 or (n >= 100 and words[1] != "十")):
        words = "两" + words[1:]
    return words


def _read_num(s: str, liang: bool = False, money: bool = False) -> str:
    """Read 1,234.50 style numbers; money drops trailing decimal zeros (12.50元 -> 十二点五元)."""
    whole, _, frac = s.replace(",", "").partition(".")
    if money:
        frac = frac.rstrip("0")
    if not frac:
        return _read_int(whole, liang)
    return _read_int(whole, liang and whole != "2") + "点" + _digits(frac)


def _liang_context(text: str, start: int, end: int) -> bool:
    """Whether a count before text[end:] reads 2 as 两: a measure word follows and 第 does not precede."""
    if start > 0 and text[start - 1] == "第":
        return False
    after = text[end:end + 4].lstrip()
    return after.startswith(_LIANG_BEFORE) and not after.startswith(_NOT_LIANG_BEFORE)


def _count_words(num: str, text: str, start: int, end: int) -> str:
    """Read a count: a bare 2 is 两 before a measure word (两个), a leading 2 is 两 unless ordinal (两千)."""
    if num == "2":
        return "两" if _liang_context(text, start, end) else "二"
    return _read_num(num, liang=not (start > 0 and text[start - 1] == "第"))


def _minus(m: re.Match) -> str:
    return "负" if m.group("sign") else ""


# Passes over the text, in order; each turns one kind of written number into words.

def _dates(text: str) -> str:
    # A dash or tilde between two dates is a range, not a minus: 4月1日-4月3日, 3月5日~7日, 2023年-2024年.
    text = re.sub(r"(?<=[年月日号])\s*(?:-|~|～|–|—)\s*(?=\d{1,4}\s*[年月日号])", "到", text)
    def ymd(m: re.Match) -> str:
        year, month, day = m.group(1), int(m.group(3)), int(m.group(4))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return m.group(0)
        return f"{_digits(year)}年{_int_words(month)}月{_int_words(day)}日"

    text = re.sub(r"(?<![\d.])(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?![\d.])", ymd, text)
    text = re.sub(r"(?<![\d.])(\d{4})" + _RANGE_SEP + r"(\d{4})(?=\s*年)",
                  lambda m: f"{_digits(m.group(1))}到{_digits(m.group(2))}", text)

    def year(m: re.Match) -> str:
        n = int(m.group(1))  # 1999年, 2000年, 2024年 are years; 5000年历史, 1000年前 are durations
        is_year = 1000 <= n <= 2199 and (n % 1000 != 0 or n == 2000)
        return _digits(m.group(1)) if is_year else m.group(1)

    return re.sub(r"(?<![\d.,])(\d{4})(?=\s*年)", year, text)


def _phones(text: str) -> str:
    def read(m: re.Match) -> str:
        return "".join(_digits(g, PHONE_ONE) for g in m.groups() if g)

    def international(m: re.Match) -> str:  # +86 138 0000 0000 -> 加八六幺三八零零零零零零零零: the code is said
        return "加" + "".join(_digits(g, PHONE_ONE) for g in re.findall(r"\d+", m.group(0)))

    text = re.sub(r"(?<![\d.])\+?86[-\s]?(?=1[3-9]\d[-\s]?\d{4}[-\s]?\d{4}(?!\d))",
                  lambda m: ("加" if m.group(0).startswith("+") else "") + "八六", text)
    text = re.sub(r"(?<![\d.\w])\+\d{1,3}(?:[-\s]\d{1,4}){2,5}(?![\d.])", international, text)
    text = re.sub(r"(?<![\d.])(1[3-9]\d)[-\s]?(\d{4})[-\s]?(\d{4})(?!\d)", read, text)
    text = re.sub(r"(?<![\d.])([48]00)-(\d{3})-(\d{4})(?!\d)", read, text)
    return re.sub(r"(?<![\d.])(0\d{2,3})-(\d{7,8})(?!\d)", read, text)


def _clock(h: int, mi: int, s: int | None) -> str | None:
    """Read a clock time (14:30 -> 十四点三十分), or None when it is not one."""
    if h > 24 or mi > 59 or (s is not None and s > 59):
        return None
    words = _read_int(str(h), liang=True) + "点"
    if mi or s is not None:
        words += ("零" if 0 < mi < 10 else "") + _int_words(mi) + "分"
    if s is not None:
        words += ("零" if 0 < s < 10 else "") + _int_words(s) + "秒"
    return words


def _times(text: str) -> str:
    def clock(m: re.Match) -> str:
        first = _clock(int(m.group(1)), int(m.group(2)), m.group(3) and int(m.group(3)))
        if m.group(4) is None:
            return first or m.group(0)
        second = _clock(int(m.group(4)), int(m.group(5)), m.group(6) and int(m.group(6)))
        return f"{first}到{second}" if first and second else m.group(0)

    time = r"(\d{1,2})[:：](\d{2})(?:[:：](\d{2}))?"
    text = re.sub(r"(?<![\d.:：])" + time + r"(?:" + _RANGE_SEP + time + r")?(?![\d.:：])", clock, text)
    # What is left of digit:digit is a ratio or a score: 3:2 -> 三比二.
    return re.sub(r"(?<![\d.])(\d+)\s*[:：]\s*(\d+)(?![\d.])",
                  lambda m: _read_int(m.group(1)) + "比" + _read_int(m.group(2)), text)


def _percents(text: str) -> str:
    def per(mark: str) -> str:
        return "千分之" if mark == "‰" else "百分之"

    text = re.sub(r"(?<![\d.])(" + _NUM + r")\s*([%‰])?" + _RANGE_SEP + r"(" + _NUM + r")\s*([%‰])",
                  lambda m: per(m.group(4)) + _read_num(m.group(1)) + "到" + per(m.group(4)) + _read_num(m.group(3)),
                  text)
    return re.sub(_SIGN + r"(?P<num>" + _NUM + r")\s*(?P<mark>[%‰])",
                  lambda m: _minus(m) + per(m.group("mark")) + _read_num(m.group("num")), text)


def _currency(text: str) -> str:
    def money(m: re.Match) -> str:
        words = _read_num(m.group("num"), liang=True, money=True) + (m.group("mag") or "")
        unit = _CURRENCY[m.group("cur")]
        written_after = m.string[m.end():].lstrip().startswith(_CURRENCY_WORDS)  # ￥12.50元: the unit is said once
        return _minus(m) + words + ("" if written_after else unit)

    text = re.sub(r"(?P<cur>" + _CURRENCY_ALT + r")\s*(?P<sign>-)?(?P<num>" + _NUM + r")(?P<mag>[万亿])?",
                  money, text)
    # An amount followed by its currency word is money too: 12.50元 -> 十二点五元 (not 十二点五零元).
    return re.sub(_SIGN + r"(?P<num>" + _NUM + r")(?P<mag>[万亿])?(?=\s*(?:" + "|".join(_CURRENCY_WORDS) + "))",
                  lambda m: _minus(m) + _read_num(m.group("num"), liang=True, money=True) + (m.group("mag") or ""), text)


def _units(text: str) -> str:
    def unit(m: re.Match) -> str:
        chinese, counts = _UNITS[m.group("unit")]
        a, b, mag = m.group("a"), m.group("b"), m.group("mag") or ""
        if len(m.group("unit")) == 1 and re.search(r"[A-Za-z]\s?$", m.string[:m.start()]):
            return m.group(0)  # iPhone 5s, Model 3 s: a one-letter "unit" after a name is part of the name
        if m.group("unit") == "s" and not (b or mag) and re.fullmatch(r"1[5-9]\d0|20\d0", a):
            return _digits(a) + "年代"  # 1990s is a decade, not 1990 seconds
        minus = "零下" if chinese.endswith("氏度") else "负"
        words = (minus if m.group("sign") else "") + _read_num(a, liang=counts)
        if not b:
            return words + mag + chinese
        if m.group("sign") and not m.group("bsign"):
            words += chinese  # -3~5℃: a range across zero names the unit at both ends
        return words + "到" + (minus if m.group("bsign") else "") + _read_num(b, liang=counts) + mag + chinese

    return re.sub(_SIGN + r"(?P<a>" + _NUM + r")(?:" + _RANGE_SEP + r"(?P<bsign>-)?(?P<b>" + _NUM + r"))?"
                  + r"\s?(?P<mag>[万亿千])?\s?(?P<unit>" + _UNIT_ALT + r")(?![A-Za-z])", unit, text)


def _ranges(text: str) -> str:
    def span(m: re.Match) -> str:  # 3-5个 -> 三到五个; the measure word after the range decides 两
        sep = "减" if m.string[m.end():].lstrip().startswith("=") else "到"  # 5-3=2 is arithmetic
        return (_count_words(m.group(1), m.string, m.start(), m.end()) + sep
                + _count_words(m.group(2), m.string, m.start(), m.end()))

    return re.sub(r"(?<![0-9A-Za-z.\-~])(" + _NUM + r")\s*(?:-|~|～|–|—)\s*(" + _NUM + r")(?![\d.]|\s*[-~]\s*\d)",
                  span, text)


def _fractions(text: str) -> str:
    def fraction(m: re.Match) -> str:
        if int(m.group("den")) == 0:
            return m.group(0)
        return _minus(m) + _read_int(m.group("den")) + "分之" + _read_int(m.group("num"))

    return re.sub(_SIGN + r"(?<![\d/])(?P<num>\d+)/(?P<den>\d+)(?![\d/])", fraction, text)


def _plain_numbers(text: str) -> str:
    text = re.sub(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d.])",  # versions and IP addresses: 1.2.3 -> 一点二点三
                  lambda m: "点".join(_digits(p) for p in m.group(0).split(".")), text)
    text = re.sub(r"(?<=[A-Za-z])\.(?=[A-Za-z0-9])|(?<=[0-9])\.(?=[A-Za-z])", "点", text)  # www.a.com, v2.x

    def number(m: re.Match) -> str:
        return _minus(m) + _count_words(m.group("num"), m.string, m.start("num"), m.end())

    return re.sub(_SIGN + r"(?P<num>" + _NUM + r")", number, text)


def _symbols(text: str) -> str:
    text = re.sub(r"(?<=[\u4e00-\u9fff])/\s*(?=" + _PER_UNITS + ")", "每", text)  # 5元/斤 -> 五元每斤
    text = re.sub(r"(?<=[\u4e00-\u9fff])/\s*(" + _UNIT_ALT + r")(?![A-Za-z])",  # 100元/kg -> 一百元每公斤
                  lambda m: "每" + _UNITS[m.group(1)][0], text)
    text = re.sub(r"\.{2,}|。{2,}", "…", text)
    out = []
    for ch in text:
        if ch in _SYMBOL_WORDS:
            out.append(_SYMBOL_WORDS[ch])
        elif ch in _PAUSE_MARKS:
            out.append("，")
        else:
            out.append(ch)
    return "".join(out).translate(_ASCII_PUNCT)


def _latin(ch: str) -> str:
    """Fold accented Latin letters to ASCII (é -> e); other letters stay as they are."""
    if "\u00c0" <= ch <= "\u024f" and ch.isalpha():  # not × or ÷, which live in the same block
        base = unicodedata.normalize("NFD", ch)[0]
        return base if base.isascii() else ""
    return ch


def _keep_only_speech(text: str) -> str:
    """Drop every character no engine can say: emoji, quotes, other scripts, stray symbols."""
    return "".join(ch for ch in text
                   if ch in PUNCTUATION or ch in " \n" or ("A" <= ch <= "Z") or _SPEAKABLE_RE.match(ch))


def _collapse_punctuation(run: re.Match) -> str:
    """A run like ？！ or ，。 becomes its strongest mark, the first one of that strength."""
    marks = run.group(0)
    top = max(_PUNCT_RANK[c] for c in marks)
    return next(c for c in marks if _PUNCT_RANK[c] == top)


def _tidy(text: str) -> str:
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r" ?\n[\s]*", "\n", text)
    text = re.sub(r" (?![A-Z])|(?<![A-Z]) ", "", text)  # a space survives only between two letters
    text = re.sub(f"[{PUNCTUATION}]{{2,}}", _collapse_punctuation, text)
    text = re.sub(f"(?m)^[{PUNCTUATION}]+", "", text)
    return re.sub(r"\n{2,}", "\n", text).strip()


def normalize(text: str) -> str:
    """Rewrite text as the engines should read it: numbers, dates and units as hanzi, letters spaced out."""
    text = re.sub(r"\r\n?|[\u2028\u2029\x85]", "\n", text)
    text = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    for sup, word in (("²", "平方"), ("³", "立方")):  # 5m² -> 5平方米, before NFKC turns ² into 2
        text = re.sub(r"(?<=[\d\s])(km|cm|mm|m)" + sup, lambda m, w=word: w + _UNITS[m.group(1)][0], text)
    text = "".join(part if _KEEP_FULLWIDTH.fullmatch(part) else unicodedata.normalize("NFKC", part)
                   for part in _KEEP_FULLWIDTH.split(text))
    text = "".join(_latin(ch) for ch in text).replace("\u2044", "/")  # NFKC writes ½ as 1⁄2
    text = re.sub(r"\bNo\.\s*(?=\d)", "第", text)  # No.1 -> 第一
    for step in (_dates, _phones, _times, _percents, _currency, _units, _ranges, _fractions, _plain_numbers):
        text = step(text)
    text = _symbols(text)
    text = re.sub(r"[A-Za-z]+", lambda m: " ".join(m.group(0).upper()) + " ", text)
    return _tidy(_keep_only_speech(text))


_WORD_END = "的了着过和与及或是在把被就都也还又而但"  # a hanzi after which a cut sounds least wrong


def _cut_by_length(piece: str, max_chars: int) -> list[str]:
    """Cut a piece with no usable punctuation at spaces or after function words, else hard at max_chars."""
    out = []
    while len(piece) > max_chars:
        window = piece[:max_chars]
        cut = max(window.rfind(" "), max((window.rfind(c) + 1 for c in _WORD_END), default=0))
        if cut < max(1, max_chars // 2):  # no good boundary in the second half: cut hard (always >= 1 char)
            cut = max_chars
        out.append(piece[:cut].strip())
        piece = piece[cut:].strip()
    return out + [piece]


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive parts while they fit, so long sentences split into few, even pieces."""
    out: list[str] = []
    for part in parts:
        if out and len(out[-1]) + len(part) <= max_chars:
            out[-1] += part
        else:
            out.append(part)
    return out


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Split normalised text into speakable pieces of at most max_chars, each keeping its punctuation."""
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars} must be at least 1")
    pieces = []
    for sentence in re.findall(f"[^{SENTENCE_ENDS}\n]*[{SENTENCE_ENDS}]+|[^{SENTENCE_ENDS}\n]+", text):
        sentence = sentence.strip()
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        clauses = re.findall(f"[^{CLAUSE_BREAKS}]*[{CLAUSE_BREAKS}]+|[^{CLAUSE_BREAKS}]+", sentence)
        for packed in _pack([clause.strip() for clause in clauses], max_chars):
            pieces.extend(_cut_by_length(packed, max_chars))
    return [p for p in pieces if _SPEAKABLE_RE.search(p)]
