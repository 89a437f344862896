"""Numbers written out in words, English to French or German: the offline translation data of
the encdec recipe.

Each example is one number below a million in English words ("three hundred and forty-two")
and the same number in the target language ("trois cent quarante-deux",
"dreihundertzweiundvierzig"). Translating them takes real structure, not a word list:

* French: irregular teens up to "seize", then "dix-sept"; 70 is "soixante-dix" and 90
  "quatre-vingt-dix" (sixty-ten, four-twenties-ten); "et un" in 21, 31, ... 71 ("soixante et
  onze") but not in 81 or 91; "quatre-vingts" and "deux cents" take their plural "s" only at
  the very end of the number ("quatre-vingt mille", "deux cent un"); "mille", never "un mille".
* German: one word per number, units before tens ("zweiundvierzig", forty-two read two and
  forty), "eins" alone but "ein" in compounds ("einhunderteins", "einundzwanzigtausend"),
  "sechzehn" and "siebzig" (not "sechszehn", "siebenzig"), "dreißig" with its own ending.
* English (the source): British usage, "and" before the last two digits when something
  precedes them ("one thousand and one", "three hundred and forty-two").

The split holds out whole combinations: a number goes to the held-out side when any of its
three-digit groups pairs a hundreds digit with a tens digit from :data:`HELD_OUT_COMBINATIONS`
(say 1 and 7: "one hundred and seventy-three", "cent soixante-treize"). Training never shows
those pairs anywhere in a number, while it shows each hundreds digit and each tens digit with
the others, so the held-out numbers are unseen and the model must compose them. Everything
is drawn from one seed with Python's own ``random``: the same call gives the same pairs on
every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

MAX_NUMBER = 999_999  # the largest number written out
LANGUAGES = ("fr", "de")  # the target languages; the source is always English

# (hundreds digit, tens digit) pairs that only the held-out side has, one per hundreds digit,
# each tens digit but zero once: the French irregular tens (7, 8, 9: "soixante-dix",
# "quatre-vingt", "quatre-vingt-dix") and the teens (1) among them.
HELD_OUT_COMBINATIONS: frozenset[tuple[int, int]] = frozenset(
    {(1, 7), (2, 8), (3, 9), (4, 1), (5, 2), (6, 3), (7, 4), (8, 5), (9, 6)}
)

_EN_UNITS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_EN_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

_FR_UNITS = [
    "zéro",
    "un",
    "deux",
    "trois",
    "quatre",
    "cinq",
    "six",
    "sept",
    "huit",
    "neuf",
    "dix",
    "onze",
    "douze",
    "treize",
    "quatorze",
    "quinze",
    "seize",
    "dix-sept",
    "dix-huit",
    "dix-neuf",
]
_FR_TENS = [
    "_",
    "_",
    "vingt",
    "trente",
    "quarante",
    "cinquante",
    "soixante",
    "_",
    "quatre-vingt",
    "_",
]

_DE_UNITS = [
    "null",
    "eins",
    "zwei",
    "drei",
    "vier",
    "fünf",
    "sechs",
    "sieben",
    "acht",
    "neun",
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
]
_DE_TENS = [
    "_",
    "_",
    "zwanzig",
    "dreißig",
    "vierzig",
    "fünfzig",
    "sechzig",
    "siebzig",
    "achtzig",
    "neunzig",
]


def _check(number: int) -> None:
    if not isinstance(number, int) or not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"numbers are written out from 0 to {MAX_NUMBER:,}, got {number!r}")


def _en_below_100(n: int) -> str:
    if n < 20:
        return _EN_UNITS[n]
    tens, units = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_UNITS[units]}" if units else "")


def english(number: int) -> str:
    """``number`` (0 to 999,999) in British English words: "three hundred and forty-two",
    "two thousand and five", "twenty-one thousand one hundred"."""
    _check(number)
    if number == 0:
        return "zero"
    thousands, rest = divmod(number, 1000)
    words = []
    for group, scale in ((thousands, " thousand"), (rest, "")):
        if not group:
            continue
        hundreds, below = divmod(group, 100)
        part = []
        if hundreds:
            part.append(f"{_EN_UNITS[hundreds]} hundred")
        if below:
            # "and" before the last two digits whenever anything precedes them.
            if hundreds or (scale == "" and thousands):
                part.append("and")
            part.append(_en_below_100(below))
        words.append(" ".join(part) + scale)
    return " ".join(words)


def _fr_below_100(n: int) -> str:
    if n < 20:
        return _FR_UNITS[n]
    tens, units = divmod(n, 10)
    if tens in (7, 9):  # sixty-ten, four-twenties-ten: the teens after 60 and 80
        base, units = _FR_TENS[tens - 1], units + 10
    else:
        base = _FR_TENS[tens]
    if units == 0:
        return base
    if units in (1, 11) and tens != 8 and tens != 9:
        return f"{base} et {_FR_UNITS[units]}"  # vingt et un, soixante et onze
    return f"{base}-{_FR_UNITS[units]}"


def _fr_below_1000(n: int, final: bool) -> str:
    """``n`` (1 to 999) in French; ``final``: nothing follows it (so "cents", "vingts")."""
    hundreds, below = divmod(n, 100)
    words = []
    if hundreds:
        cent = "cent" if hundreds == 1 else f"{_FR_UNITS[hundreds]} cent"
        words.append(cent + ("s" if hundreds > 1 and below == 0 and final else ""))
    if below:
        words.append(_fr_below_100(below) + ("s" if below == 80 and final else ""))
    return " ".join(words)


def french(number: int) -> str:
    """``number`` (0 to 999,999) in French words, traditional spelling (hyphens below a
    hundred only): "trois cent quarante-deux", "quatre-vingt mille", "deux cents"."""
    _check(number)
    if number == 0:
        return "zéro"
    thousands, rest = divmod(number, 1000)
    words = []
    if thousands:
        # "mille" is invariable and takes no "un"; what multiplies it takes no plural "s".
        words.append("mille" if thousands == 1 else f"{_fr_below_1000(thousands, False)} mille")
    if rest:
        words.append(_fr_below_1000(rest, True))
    return " ".join(words)


def _de_below_1000(n: int, final: bool) -> str:
    """``n`` (1 to 999) in German; ``final``: it ends the number (so a last 1 is "eins")."""
    hundreds, below = divmod(n, 100)
    word = f"{_DE_UNITS[hundreds] if hundreds > 1 else 'ein'}hundert" if hundreds else ""
    if below == 1:
        word += "eins" if final else "ein"
    elif below < 20:
        word += _DE_UNITS[below] if below else ""
    else:
        tens, units = divmod(below, 10)
        if units:
            word += ("ein" if units == 1 else _DE_UNITS[units]) + "und"
        word += _DE_TENS[tens]
    return word


def german(number: int) -> str:
    """``number`` (0 to 999,999) in German, one word: "dreihundertzweiundvierzig",
    "einundzwanzigtausendeins", "eintausend"."""
    _check(number)
    if number == 0:
        return "null"
    thousands, rest = divmod(number, 1000)
    word = f"{_de_below_1000(thousands, False)}tausend" if thousands else ""
    return word + (_de_below_1000(rest, True) if rest else "")


TARGETS: dict[str, Callable[[int], str]] = {"fr": french, "de": german}


def is_held_out(number: int) -> bool:
    """Whether ``number`` belongs to the held-out side: one of its three-digit groups pairs a
    hundreds digit with a tens digit of :data:`HELD_OUT_COMBINATIONS`."""
    _check(number)
    for group in divmod(number, 1000):
        if (group // 100, group // 10 % 10) in HELD_OUT_COMBINATIONS:
            return True
    return False


def _draw(rng: random.Random, held_out: bool) -> int:
    """One number of the chosen side, its count of digits uniform over those the side has
    (so that short numbers are as common as long ones, as in real text)."""
    while True:
        # A held-out number has a hundreds digit: at least three digits.
        digits = rng.randint(3 if held_out else 1, 6)
        number = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        if is_held_out(number) == held_out:
            return number


def number_pairs(
    count: int,
    target: str = "fr",
    seed: int | str = 0,
    held_out: bool = False,
) -> list[dict[str, object]]:
    """``count`` examples ``{"number", "source", "target"}`` of the training side (or, with
    ``held_out``, of the held-out side), the source in English and the target in ``target``
    (``"fr"`` or ``"de"``), drawn from ``seed``.

    The held-out side's numbers are distinct (each is scored once); the training side's may
    repeat, as small numbers must (there are ten one-digit numbers).
    """
    if target not in TARGETS:
        raise ValueError(f"the target language must be one of {LANGUAGES}, got {target!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = random.Random(f"number pairs {seed} {'held out' if held_out else 'train'}")
    numbers: list[int] = []
    seen: set[int] = set()
    while len(numbers) < count:
        number = _draw(rng, held_out)
        if held_out:
            if number in seen:
                continue
            seen.add(number)
        numbers.append(number)
    write = TARGETS[target]
    return [{"number": n, "source": english(n), "target": write(n)} for n in numbers]
