"""The user's translation pairs for the encdec recipe (``--dataset``, ``--eval-dataset``).

Two layouts, both read through :mod:`scratchformers.training.tables` (so ``.tsv``, ``.csv``,
``.jsonl``, ``.json``, ``.parquet`` or a Hugging Face dataset id, or a local folder of such
files):

* two text columns, ``--source-column`` and ``--target-column`` (``source`` and ``target`` by
  default), one pair a row;
* Hugging Face's translation layout: a ``translation`` column of ``{language: text}``
  dictionaries (``wmt``, ``opus_books``, ...), read with ``--source-lang`` and
  ``--target-lang``.

Every pair is checked before any work: a row whose source or target is missing or blank stops
the run naming the row, since a model trained to translate into nothing would learn to stop at
once. Without ``--eval-dataset``, ``--eval-fraction`` of the pairs is held out by the hash of
their text (see :func:`scratchformers.training.tables.held_out_by_content`).

Used by :mod:`scratchformers.recipes.encdec`, so it needs the ``[train]`` extra; the model's
own modules never import it.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from scratchformers.training.console import status
from scratchformers.training.data import DataError
from scratchformers.training.tables import held_out_by_content, read_table, require_columns

TRANSLATION_COLUMN = "translation"
Pair = dict[str, str]  # {"source": ..., "target": ...}


@dataclass(frozen=True)
class PairLayout:
    """Where a table keeps its pairs: two columns, or one ``translation`` column of
    ``{language: text}`` read at two languages."""

    source_column: str = "source"
    target_column: str = "target"
    source_lang: str | None = None
    target_lang: str | None = None

    @classmethod
    def from_options(cls, options: Namespace) -> PairLayout:
        """The layout the recipe's flags describe."""
        return cls(
            source_column=options.source_column,
            target_column=options.target_column,
            source_lang=options.source_lang,
            target_lang=options.target_lang,
        )

    @property
    def direction(self) -> str:
        """``"en -> fr"``, or the column names when the table has no languages."""
        if self.source_lang and self.target_lang:
            return f"{self.source_lang} -> {self.target_lang}"
        return f"{self.source_column} -> {self.target_column}"


def read_pairs(source: str, flag: str, layout: PairLayout, *, split: str = "train") -> list[Pair]:
    """Every pair of the table ``source`` (given with ``flag``), as ``{"source", "target"}``
    texts, in the table's order. Raises a :class:`DataError` (one line, naming ``flag``) for a
    table that cannot be read, a missing column (naming the columns it has), a translation
    layout without both languages, or a row with an empty side (naming the row)."""
    table = read_table(source, flag, split=split)
    columns = list(table.column_names)
    by_language = layout.source_lang is not None or layout.target_lang is not None
    # A Hub translation dataset read without the languages: say which flags it needs, and
    # which languages it holds, rather than only that there is no "source" column.
    if not by_language and layout.source_column not in columns and TRANSLATION_COLUMN in columns:
        raise DataError(
            f"{flag} {source} holds a {TRANSLATION_COLUMN!r} column of {{language: text}} "
            f"(languages {', '.join(_languages(table))}) and no column "
            f"{layout.source_column!r}; give --source-lang and --target-lang"
        )
    if by_language:
        require_columns(table, {"--source-lang": TRANSLATION_COLUMN}, source, flag)
        languages = _languages(table)
        for language_flag, language in (
            ("--source-lang", layout.source_lang),
            ("--target-lang", layout.target_lang),
        ):
            if language is None or language not in languages:
                said = "is missing" if language is None else f"{language!r} is not in it"
                raise DataError(
                    f"{flag} {source}: {language_flag} {said} (the {TRANSLATION_COLUMN} column's "
                    f"languages: {', '.join(languages)})"
                )
        rows = [row or {} for row in table[TRANSLATION_COLUMN]]
        texts = [(row.get(layout.source_lang), row.get(layout.target_lang)) for row in rows]
        names = (layout.source_lang, layout.target_lang)
    else:
        require_columns(
            table,
            {"--source-column": layout.source_column, "--target-column": layout.target_column},
            source,
            flag,
        )
        texts = list(zip(table[layout.source_column], table[layout.target_column], strict=True))
        names = (layout.source_column, layout.target_column)
    pairs = []
    for row, (source_text, target_text) in enumerate(texts, start=1):
        for side, text, other in ((0, source_text, target_text), (1, target_text, source_text)):
            if text is None or not str(text).strip():
                raise DataError(
                    f"{flag} {source}: row {row} has an empty {names[side]} (its "
                    f"{names[1 - side]}: {str(other)[:60]!r}); every pair needs both sides"
                )
        pairs.append({"source": str(source_text).strip(), "target": str(target_text).strip()})
    return pairs


def _languages(table: Any) -> list[str]:
    """The languages of a translation column: the keys of its dictionaries (a struct column
    gives every row the same keys; the first rows say them all)."""
    feature = table.features.get(TRANSLATION_COLUMN)
    languages = getattr(feature, "languages", None)  # datasets.Translation names them
    if languages:
        return list(languages)
    found: dict[str, None] = {}
    for row in table.select(range(min(len(table), 100)))[TRANSLATION_COLUMN]:
        found.update(dict.fromkeys(row or {}))
    return list(found)


def train_and_held_out_pairs(
    options: Namespace, layout: PairLayout
) -> tuple[list[Pair], list[Pair], str]:
    """The training and held-out pairs of ``--dataset`` and ``--eval-dataset`` (or
    ``--eval-fraction`` of ``--dataset``, by the hash of each pair's text), and a description
    of what was read, for the log and the model card."""
    import datasets

    train = read_pairs(options.dataset, "--dataset", layout)
    if options.eval_dataset:
        held_out = read_pairs(options.eval_dataset, "--eval-dataset", layout, split="validation")
        origin = f"{options.dataset}, held out: {options.eval_dataset}"
    else:
        table = datasets.Dataset.from_list(train)
        train_table, held_table = held_out_by_content(
            table, options.eval_fraction, ["source", "target"], options.dataset
        )
        train, held_out = train_table.to_list(), held_table.to_list()
        origin = f"{options.dataset} ({options.eval_fraction:.0%} held out by content)"
    status(
        f"read {origin}: {len(train):,} training and {len(held_out):,} held-out pairs "
        f"({layout.direction}), such as {train[0]['source'][:50]!r} -> "
        f"{train[0]['target'][:50]!r}"
    )
    return train, held_out, origin
