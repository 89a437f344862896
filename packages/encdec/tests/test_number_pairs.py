"""The generated translation data: number words right in all three languages, held-out numbers
and combinations never in training, the same pairs from the same seed."""

from __future__ import annotations

import pytest

from scratchformers.encdec.number_pairs import (
    HELD_OUT_COMBINATIONS,
    english,
    french,
    german,
    is_held_out,
    number_pairs,
)

# number: (English, French, German), written out by hand.
KNOWN = {
    0: ("zero", "zéro", "null"),
    1: ("one", "un", "eins"),
    7: ("seven", "sept", "sieben"),
    11: ("eleven", "onze", "elf"),
    16: ("sixteen", "seize", "sechzehn"),
    17: ("seventeen", "dix-sept", "siebzehn"),
    21: ("twenty-one", "vingt et un", "einundzwanzig"),
    30: ("thirty", "trente", "dreißig"),
    42: ("forty-two", "quarante-deux", "zweiundvierzig"),
    61: ("sixty-one", "soixante et un", "einundsechzig"),
    70: ("seventy", "soixante-dix", "siebzig"),
    71: ("seventy-one", "soixante et onze", "einundsiebzig"),
    77: ("seventy-seven", "soixante-dix-sept", "siebenundsiebzig"),
    80: ("eighty", "quatre-vingts", "achtzig"),
    81: ("eighty-one", "quatre-vingt-un", "einundachtzig"),
    91: ("ninety-one", "quatre-vingt-onze", "einundneunzig"),
    99: ("ninety-nine", "quatre-vingt-dix-neuf", "neunundneunzig"),
    100: ("one hundred", "cent", "einhundert"),
    101: ("one hundred and one", "cent un", "einhunderteins"),
    180: ("one hundred and eighty", "cent quatre-vingts", "einhundertachtzig"),
    200: ("two hundred", "deux cents", "zweihundert"),
    201: ("two hundred and one", "deux cent un", "zweihunderteins"),
    342: ("three hundred and forty-two", "trois cent quarante-deux", "dreihundertzweiundvierzig"),
    1000: ("one thousand", "mille", "eintausend"),
    1001: ("one thousand and one", "mille un", "eintausendeins"),
    1042: ("one thousand and forty-two", "mille quarante-deux", "eintausendzweiundvierzig"),
    2000: ("two thousand", "deux mille", "zweitausend"),
    21000: ("twenty-one thousand", "vingt et un mille", "einundzwanzigtausend"),
    80000: ("eighty thousand", "quatre-vingt mille", "achtzigtausend"),
    200200: (
        "two hundred thousand two hundred",
        "deux cent mille deux cents",
        "zweihunderttausendzweihundert",
    ),
    999999: (
        "nine hundred and ninety-nine thousand nine hundred and ninety-nine",
        "neuf cent quatre-vingt-dix-neuf mille neuf cent quatre-vingt-dix-neuf",
        "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
    ),
}


@pytest.mark.parametrize("number", sorted(KNOWN))
def test_number_words_are_right_in_every_language(number: int) -> None:
    assert (english(number), french(number), german(number)) == KNOWN[number]


@pytest.mark.parametrize("bad", [-1, 1_000_000, 2.5, "7"])
def test_numbers_out_of_range_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"from 0 to 999,999"):
        english(bad)  # type: ignore[arg-type]


def test_held_out_numbers_are_exactly_those_with_a_held_out_combination() -> None:
    assert is_held_out(173) and is_held_out(173_000) and is_held_out(5_285)
    assert not is_held_out(160) and not is_held_out(183) and not is_held_out(73)
    everything = range(1_000_000)
    held_out = sum(map(is_held_out, everything))
    # 9 of the 100 (hundreds, tens) pairs, in either of the two groups: 1 - 0.91^2 of them.
    assert held_out == 1_000_000 - 910 * 910, held_out


@pytest.mark.parametrize("target", ["fr", "de"])
def test_the_split_is_disjoint_and_covers_the_held_out_combinations(target: str) -> None:
    train = number_pairs(20000, target, seed=0)
    held_out = number_pairs(500, target, seed=0, held_out=True)
    train_numbers = {pair["number"] for pair in train}
    held_numbers = [pair["number"] for pair in held_out]
    assert not train_numbers & set(held_numbers)
    assert len(set(held_numbers)) == 500  # each scored once
    assert not any(map(is_held_out, train_numbers))
    assert all(map(is_held_out, held_numbers))
    # Training never shows a held-out combination in any position, in either language.
    for number in train_numbers:
        for group in divmod(number, 1000):
            assert (group // 100, group // 10 % 10) not in HELD_OUT_COMBINATIONS
    # Short numbers are as common as long ones (digits drawn uniformly): every one-digit one.
    assert set(range(10)) <= train_numbers
    write = french if target == "fr" else german
    assert all(p["source"] == english(p["number"]) for p in train[:200])
    assert all(p["target"] == write(p["number"]) for p in held_out)


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others() -> None:
    assert number_pairs(50, "fr", seed=3) == number_pairs(50, "fr", seed=3)
    assert number_pairs(50, "fr", seed=3) != number_pairs(50, "fr", seed=4)
    with pytest.raises(ValueError, match=r"one of \('fr', 'de'\), got 'es'"):
        number_pairs(5, "es")
