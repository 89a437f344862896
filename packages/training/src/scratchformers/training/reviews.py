"""Product reviews written by code: the offline text-classification dataset of the fine-tuning
recipes.

Every review is one or two clauses about parts of a product ("the battery is very good", "the
screen does not seem great"), joined by "and", "but" or "although". Its label (negative,
neutral or positive) follows from how the clauses compose, not from which words occur:

* a clause scores +1 for a positive adjective, -1 for a negative one, 0 for a neutral one
  ("okay", "average"); an intensifier doubles it ("very good": +2, "really bad": -2);
  negation turns praise into criticism ("not good", "not very good": -1) and criticism into
  nothing ("not bad", "never terrible": 0). Neutral adjectives are never intensified or
  negated.
* "A and B" adds the two scores: "very good and bad" is +1, "good and bad" 0.
* "A but B" and "although A, B": the main clause B decides; "B, although A": B decides too,
  now written first. The two clauses of these always differ in sign, as a contrast does.
* The label is the sign of the review's score.

So the words alone cannot tell the label: "the screen is good but the battery is bad" is
negative, "the battery is bad but the screen is good" positive, with the same words. Every
review is built from its parts (:class:`Clause`, :class:`Review`) and labelled from them, so
each label is right by construction, and everything is drawn from one seed: the same call gives
the same reviews on every machine. The training and held-out splits partition the space of
texts by a hash of each text, so no held-out review is ever a training review, whatever the
sizes and seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

import datasets

SENTIMENTS = ("negative", "neutral", "positive")
ASPECTS = (
    "battery",
    "screen",
    "camera",
    "keyboard",
    "speaker",
    "sound",
    "price",
    "design",
    "case",
    "charger",
    "software",
    "delivery",
    "packaging",
    "manual",
    "strap",
    "handle",
)
POSITIVE = (
    "good",
    "great",
    "excellent",
    "solid",
    "reliable",
    "fantastic",
    "impressive",
    "sturdy",
    "lovely",
    "superb",
)
NEGATIVE = (
    "bad",
    "poor",
    "terrible",
    "awful",
    "flimsy",
    "disappointing",
    "weak",
    "unreliable",
    "horrible",
    "useless",
)
NEUTRAL = ("okay", "average", "ordinary", "adequate", "standard")
INTENSIFIERS = ("very", "really", "extremely", "incredibly", "truly")
# Each verb as written plainly, after "not", and after "never".
VERBS: dict[str, dict[str, str]] = {
    "is": {"not": "is not", "never": "is never"},
    "was": {"not": "was not", "never": "was never"},
    "seems": {"not": "does not seem", "never": "never seems"},
    "feels": {"not": "does not feel", "never": "never feels"},
}
NEGATIONS = ("not", "never")
# How two clauses are joined. "although" is the concession "although A, B"; "although after"
# the same with the main clause first: "B, although A".
STRUCTURES = ("single", "and", "but", "although", "although after")
COLUMNS = ("text", "label", "structure", "score")
Split = Literal["train", "held-out"]

_STRUCTURE_SHARES = (0.3, 0.25, 0.25, 0.1, 0.1)  # of STRUCTURES, in order
_NEUTRAL_SHARE = 0.2  # of the clauses: a neutral adjective, left bare
_INTENSIFIED_SHARE = 0.35  # of the other clauses, independently of the negation
_NEGATED_SHARE = 0.35
_HELD_OUT_BUCKETS = 10  # one text in this many (by its hash) belongs to the held-out split
_MAX_DRAWS_PER_REVIEW = 10_000


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


@dataclass(frozen=True)
class Clause:
    """One statement about one aspect: ``the {aspect} {verb} [not|never] [very] {adjective}``.

    ``adjective`` is one of :data:`POSITIVE`, :data:`NEGATIVE` or :data:`NEUTRAL`;
    ``intensifier`` one of :data:`INTENSIFIERS` or None; ``negation`` one of
    :data:`NEGATIONS` or None; ``verb`` a key of :data:`VERBS`.
    """

    aspect: str
    adjective: str
    verb: str = "is"
    intensifier: str | None = None
    negation: str | None = None

    def __post_init__(self) -> None:
        for value, known, what in (
            (self.aspect, ASPECTS, "aspect"),
            (self.adjective, POSITIVE + NEGATIVE + NEUTRAL, "adjective"),
            (self.verb, tuple(VERBS), "verb"),
        ):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r}; the {what}s are {', '.join(known)}")
        if self.intensifier is not None and self.intensifier not in INTENSIFIERS:
            raise ValueError(
                f"unknown intensifier {self.intensifier!r}; use one of {', '.join(INTENSIFIERS)}"
            )
        if self.negation is not None and self.negation not in NEGATIONS:
            raise ValueError(
                f"unknown negation {self.negation!r}; use one of {', '.join(NEGATIONS)}"
            )
        if self.adjective in NEUTRAL and (self.intensifier or self.negation):
            raise ValueError(
                f"the neutral adjective {self.adjective!r} is neither intensified nor negated"
            )

    @property
    def text(self) -> str:
        verb = VERBS[self.verb][self.negation] if self.negation else self.verb
        words = ["the", self.aspect, verb, self.intensifier, self.adjective]
        return " ".join(word for word in words if word)

    @property
    def score(self) -> int:
        """+1 / -1 / 0 by the adjective, doubled by an intensifier; a negated clause scores -1
        for praise and 0 for criticism."""
        polarity = 1 if self.adjective in POSITIVE else -1 if self.adjective in NEGATIVE else 0
        if self.negation:
            return -1 if polarity > 0 else 0
        return polarity * (2 if self.intensifier else 1)


@dataclass(frozen=True)
class Review:
    """A review: one clause (``structure="single"``), or ``first`` and ``second`` joined as
    ``structure`` (a key of :data:`STRUCTURES`) says. For "but", "although" and "although
    after", ``second`` is the main clause and decides the label, and the two clauses must
    differ in sign."""

    first: Clause
    structure: str = "single"
    second: Clause | None = None

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(
                f"unknown structure {self.structure!r}; the structures are {', '.join(STRUCTURES)}"
            )
        if (self.structure == "single") != (self.second is None):
            raise ValueError(
                "a single review has one clause; the other structures join a first and a second"
            )
        if self.second is not None:
            if self.first.aspect == self.second.aspect:
                raise ValueError(f"both clauses are about the {self.first.aspect}")
            if self.structure not in ("single", "and") and (
                _sign(self.first.score) == _sign(self.second.score)
            ):
                raise ValueError(
                    f"{self.structure!r} joins clauses that contrast: {self.first.text!r} and "
                    f"{self.second.text!r} agree"
                )

    @property
    def text(self) -> str:
        first, second = self.first.text, self.second.text if self.second else ""
        if self.structure == "single":
            return first
        if self.structure == "although":
            return f"although {first}, {second}"
        if self.structure == "although after":
            return f"{second}, although {first}"
        return f"{first} {self.structure} {second}"

    @property
    def score(self) -> int:
        if self.second is None:
            return self.first.score
        if self.structure == "and":
            return self.first.score + self.second.score
        return self.second.score  # the main clause of a contrast

    @property
    def label(self) -> int:
        """The index in :data:`SENTIMENTS` of the sign of the score."""
        return _sign(self.score) + 1

    @property
    def sentiment(self) -> str:
        return SENTIMENTS[self.label]


def split_of(text: str) -> Split:
    """The split a review's text belongs to, by its hash: one text in ten is held out."""
    bucket = hashlib.sha256(text.encode()).digest()[0] % _HELD_OUT_BUCKETS
    return "held-out" if bucket == 0 else "train"


def reviews_dataset(
    num_reviews: int, seed: int | str = 0, split: Split = "train"
) -> datasets.Dataset:
    """``num_reviews`` distinct generated reviews of ``split`` (``"train"`` or
    ``"held-out"``, which share no text; see :func:`split_of`).

    Columns: ``text``, ``label`` (``ClassLabel`` named by :data:`SENTIMENTS`), ``structure``
    (a key of :data:`STRUCTURES`) and ``score`` (the review's score, whose sign is the
    label). The classes are balanced to within one review, in a shuffled order. ``seed`` (an
    int or a string) fixes every review.
    """
    if num_reviews < 1:
        raise ValueError(f"num_reviews must be at least 1, got {num_reviews}")
    if split not in ("train", "held-out"):
        raise ValueError(f"split must be 'train' or 'held-out', got {split!r}")
    rng = random.Random(seed)
    labels = [index % len(SENTIMENTS) for index in range(num_reviews)]
    rng.shuffle(labels)
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    seen: set[str] = set()
    for label in labels:
        review = _draw_review(rng, label, split, seen)
        seen.add(review.text)
        for name, value in zip(
            COLUMNS, (review.text, label, review.structure, review.score), strict=True
        ):
            columns[name].append(value)
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(SENTIMENTS)),
            "structure": datasets.Value("string"),
            "score": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def _draw_review(rng: random.Random, label: int, split: Split, seen: set[str]) -> Review:
    """A random review of ``label`` in ``split`` whose text is not in ``seen``."""
    for _ in range(_MAX_DRAWS_PER_REVIEW):
        review = random_review(rng)
        if review.label == label and review.text not in seen and split_of(review.text) == split:
            return review
    raise ValueError(f"no new {SENTIMENTS[label]} review left to draw for the {split} split")


def random_review(rng: random.Random) -> Review:
    """One review with a random structure and random clauses, drawn from ``rng``."""
    structure = rng.choices(STRUCTURES, weights=_STRUCTURE_SHARES)[0]
    first = random_clause(rng)
    if structure == "single":
        return Review(first)
    while True:
        second = random_clause(rng, other_than=first.aspect)
        if structure == "and" or _sign(second.score) != _sign(first.score):
            return Review(first, structure, second)


def random_clause(rng: random.Random, other_than: str | None = None) -> Clause:
    """One clause about an aspect other than ``other_than``, drawn from ``rng``."""
    aspect = rng.choice([aspect for aspect in ASPECTS if aspect != other_than])
    verb = rng.choice(tuple(VERBS))
    if rng.random() < _NEUTRAL_SHARE:
        return Clause(aspect, rng.choice(NEUTRAL), verb)
    adjective = rng.choice(POSITIVE + NEGATIVE)
    intensifier = rng.choice(INTENSIFIERS) if rng.random() < _INTENSIFIED_SHARE else None
    negation = rng.choice(NEGATIONS) if rng.random() < _NEGATED_SHARE else None
    return Clause(aspect, adjective, verb, intensifier, negation)
