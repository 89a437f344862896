"""The generated reviews: deterministic, balanced, held out by text, labelled right by
construction (checked against hand-written labels and an independent reading of every text),
and out of reach of a bag of words."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from scratchformers.training import SENTIMENTS, Clause, Review, reviews_dataset
from scratchformers.training.reviews import (
    INTENSIFIERS,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    STRUCTURES,
    split_of,
)


def test_the_reviews_are_deterministic_balanced_and_held_out_by_text() -> None:
    first, again, other = (reviews_dataset(300, seed=seed) for seed in (3, 3, 4))
    assert first["text"] == again["text"] and first["label"] == again["label"]
    assert first["text"] != other["text"]
    assert first.features["label"].names == list(SENTIMENTS)
    assert Counter(first["label"]) == dict.fromkeys(range(3), 100)
    assert first["label"] != sorted(first["label"]), "shuffled, not class by class"
    assert len(set(first["text"])) == 300, "no review twice"
    assert set(first["structure"]) == set(STRUCTURES)
    held_out = reviews_dataset(300, seed=3, split="held-out")
    assert not set(held_out["text"]) & (set(first["text"]) | set(other["text"]))
    assert {split_of(text) for text in held_out["text"]} == {"held-out"}
    assert {split_of(text) for text in first["text"]} == {"train"}


@pytest.mark.parametrize(
    ("review", "text", "sentiment"),
    [
        (Review(Clause("battery", "good")), "the battery is good", "positive"),
        (Review(Clause("battery", "good", negation="not")), "the battery is not good", "negative"),
        (
            Review(Clause("battery", "good", "seems", "very", "not")),
            "the battery does not seem very good",
            "negative",
        ),
        (Review(Clause("battery", "bad", negation="not")), "the battery is not bad", "neutral"),
        (Review(Clause("price", "okay", "was")), "the price was okay", "neutral"),
        (
            Review(Clause("screen", "good"), "and", Clause("case", "bad")),
            "the screen is good and the case is bad",
            "neutral",
        ),
        (
            Review(Clause("screen", "good", intensifier="really"), "and", Clause("case", "bad")),
            "the screen is really good and the case is bad",
            "positive",
        ),
        (
            Review(Clause("screen", "good"), "but", Clause("case", "bad")),
            "the screen is good but the case is bad",
            "negative",
        ),
        (
            Review(Clause("screen", "bad"), "but", Clause("case", "good")),
            "the screen is bad but the case is good",
            "positive",
        ),
        (
            Review(Clause("screen", "great"), "although", Clause("case", "okay")),
            "although the screen is great, the case is okay",
            "neutral",
        ),
        (
            Review(Clause("screen", "great"), "although after", Clause("case", "awful")),
            "the case is awful, although the screen is great",
            "negative",
        ),
        (
            Review(Clause("screen", "bad", negation="never"), "but", Clause("case", "weak")),
            "the screen is never bad but the case is weak",
            "negative",
        ),
    ],
)
def test_labels_follow_the_composition(review: Review, text: str, sentiment: str) -> None:
    assert (review.text, review.sentiment) == (text, sentiment)


def read_score(text: str) -> int:
    """The score of a review's text, read from the words alone, independently of how the
    generator builds and scores it."""

    def clause(words: list[str]) -> int:
        polarity = 1 if words[-1] in POSITIVE else -1 if words[-1] in NEGATIVE else 0
        assert polarity or words[-1] in NEUTRAL, words
        if "not" in words or "never" in words:
            return -1 if polarity > 0 else 0
        return polarity * (2 if words[-2] in INTENSIFIERS else 1)

    if text.startswith("although "):
        _, main = text.removeprefix("although ").split(", ")
        return clause(main.split())
    if ", although " in text:
        main, _ = text.split(", although ")
        return clause(main.split())
    if " but " in text:
        return clause(text.split(" but ")[1].split())
    if " and " in text:
        return sum(clause(part.split()) for part in text.split(" and "))
    return clause(text.split())


def test_every_generated_label_is_the_one_its_text_says() -> None:
    for split in ("train", "held-out"):
        for row in reviews_dataset(1500, seed="check", split=split):
            score = read_score(row["text"])
            assert (score, (score > 0) - (score < 0) + 1) == (row["score"], row["label"]), row


def test_same_words_different_labels() -> None:
    """Every contrast review has a twin with its clauses swapped: the same words, the
    opposite label. A bag of words gets at most one of each pair right."""
    twins = 0
    for row in reviews_dataset(600, seed=1):
        if row["structure"] not in ("but", "although"):
            continue
        review = _parse(row["text"], row["structure"])
        twin = Review(review.second, review.structure, review.first)
        assert Counter(twin.text.replace(",", "").split()) == Counter(
            review.text.replace(",", "").split()
        )
        assert twin.label != review.label and review.label == row["label"], (review, twin)
        twins += 1
    assert twins > 150


def _parse(text: str, structure: str) -> Review:
    """The review a contrast text was written from (verb "is", as "is" reads plainly)."""

    def clause(words: list[str]) -> Clause:
        verbs = {"is", "was", "seems", "feels", "seem", "feel"}
        verb = next(word for word in words if word in verbs)
        verb = {"seem": "seems", "feel": "feels"}.get(verb, verb)
        negation = next((word for word in words if word in ("not", "never")), None)
        intensifier = words[-2] if words[-2] in INTENSIFIERS else None
        return Clause(words[1], words[-1], verb, intensifier, negation)

    if structure == "but":
        first, second = text.split(" but ")
    else:
        first, second = text.removeprefix("although ").split(", ")
    return Review(clause(first.split()), structure, clause(second.split()))


def test_a_bag_of_words_stays_far_from_perfect() -> None:
    """A logistic regression on word counts learns the words' leanings, not how they
    compose: far above chance, far below what composition reaches."""
    train, held_out = reviews_dataset(4000, seed=0), reviews_dataset(600, split="held-out")
    vocabulary = {
        word: index
        for index, word in enumerate(sorted({w for t in train["text"] for w in t.split()}))
    }

    def counts(texts: list[str]) -> torch.Tensor:
        matrix = torch.zeros(len(texts), len(vocabulary))
        for row, text in enumerate(texts):
            for word in text.split():
                if word in vocabulary:
                    matrix[row, vocabulary[word]] += 1
        return matrix

    features, labels = counts(train["text"]), torch.tensor(train["label"])
    torch.manual_seed(0)
    classifier = torch.nn.Linear(len(vocabulary), len(SENTIMENTS))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(classifier(features), labels).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = classifier(counts(held_out["text"])).argmax(-1)
    accuracy = float((predicted == torch.tensor(held_out["label"])).float().mean())
    assert 0.5 < accuracy < 0.75, accuracy


def test_bad_parts_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown adjective 'meh'"):
        Clause("battery", "meh")
    with pytest.raises(ValueError, match="neutral adjective 'okay' is neither"):
        Clause("battery", "okay", negation="not")
    with pytest.raises(ValueError, match="'but' joins clauses that contrast"):
        Review(Clause("screen", "good"), "but", Clause("case", "great"))
    with pytest.raises(ValueError, match="both clauses are about the screen"):
        Review(Clause("screen", "good"), "and", Clause("screen", "bad"))
    with pytest.raises(ValueError, match="num_reviews must be at least 1"):
        reviews_dataset(0)
