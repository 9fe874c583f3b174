"""Numbers out of free text, the way a grader reads an answer: Arabic or Chinese numerals, English number words up
to ninety-nine, thousands commas, units after the number, fractions (3/4, 四分之三), decimals, negative numbers
(-3, −3, 负三, minus three).

Every number is returned as an exact `Fraction`, so 0.5 == 1/2 == 二分之一 and 3.0 == 3 compare equal.
"""

import re
from fractions import Fraction

CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
CN_BIG_UNITS = {"万": 10_000, "亿": 100_000_000}
_CN_INT = "[零〇一二两三四五六七八九十百千万亿]+"
_CN_NUM = rf"负?{_CN_INT}(?:点[零〇一二两三四五六七八九]+)?"
_AR_NUM = r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_EN_NUM = (rf"(?i:\b(?:minus |negative )?(?:(?:{'|'.join(EN_TENS)})(?:[- ](?:{'|'.join(EN_UNITS[1:10])}))?"
           rf"|{'|'.join(reversed(EN_UNITS))})\b)")
# One pattern, longest forms first: a fraction before the plain number it starts with.
NUMBER = re.compile(
    rf"(?P<frac>{_AR_NUM})\s*/\s*(?P<den>\d+(?:\.\d+)?)"
    rf"|(?P<cnden>{_CN_NUM})分之(?P<cnnum>{_CN_NUM})"
    rf"|(?P<ar>{_AR_NUM})"
    rf"|(?P<cn>{_CN_NUM})"
    rf"|(?P<en>{_EN_NUM})")


def chinese_integer(text: str) -> int:
    """三百二十五 -> 325, 两千零五 -> 2005, 十二 -> 12, 一万三千 -> 13000, 三五 -> 35 (digit by digit)."""
    if not any(c in CN_SMALL_UNITS or c in CN_BIG_UNITS for c in text):
        return int("".join(str(CN_DIGITS[c]) for c in text))  # 二〇二六: read digit by digit
    total = section = digit = 0
    for char in text:
        if char in CN_DIGITS:
            digit = CN_DIGITS[char]
        elif char in CN_SMALL_UNITS:
            section += (digit or 1) * CN_SMALL_UNITS[char]  # 十二: a bare 十 is ten
            digit = 0
        else:  # 万 / 亿 scale everything read since the last bigger unit
            total = (total + section + digit) * CN_BIG_UNITS[char]
            section = digit = 0
    return total + section + digit


def chinese_number(text: str) -> Fraction:
    negative = text.startswith("负")
    whole, _, decimals = text.removeprefix("负").partition("点")
    value = Fraction(chinese_integer(whole)) if whole else Fraction(0)
    if decimals:
        value += Fraction(int("".join(str(CN_DIGITS[c]) for c in decimals)), 10 ** len(decimals))
    return -value if negative else value


def english_number(text: str) -> Fraction:
    """"twenty-one" -> 21, "minus three" -> -3 (words up to ninety-nine)."""
    words = text.lower().replace("-", " ").split()
    negative = words[0] in ("minus", "negative")
    words = words[1:] if negative else words
    value = sum(EN_UNITS.index(w) if w in EN_UNITS else 20 + 10 * EN_TENS.index(w) for w in words)
    return Fraction(-value if negative else value)


def arabic_number(text: str) -> Fraction:
    return Fraction(text.replace(",", "").replace("−", "-"))


def numbers(text: str) -> list[Fraction]:
    """Every number in `text`, in order of appearance."""
    out = []
    for m in NUMBER.finditer(text):
        if m["frac"] is not None:
            den = arabic_number(m["den"])
            if den:
                out.append(arabic_number(m["frac"]) / den)
        elif m["cnden"] is not None:
            den = chinese_number(m["cnden"])
            if den:
                out.append(chinese_number(m["cnnum"]) / den)
        elif m["ar"] is not None:
            out.append(arabic_number(m["ar"]))
        elif m["cn"] is not None:
            out.append(chinese_number(m["cn"]))
        else:
            out.append(english_number(m["en"]))
    return out


def parse_number(text: str) -> Fraction | None:
    """The one number a reference answer holds ("42", "1,234 元", "-3/4", "负十二"), or None if it holds none."""
    found = numbers(str(text))
    return found[0] if found else None


def format_number(value: Fraction) -> str:
    """The shortest exact text of `value`: 3, -1.5, 2/3."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = value.numerator / value.denominator
    return str(decimal) if Fraction(decimal) == value else f"{value.numerator}/{value.denominator}"
