"""The user's labelled texts for the lora recipe (``--dataset``, ``--eval-dataset``).

A table (``.csv``, ``.jsonl``, ``.parquet``, ... or a Hugging Face dataset id, or a local
folder of such files, read by :mod:`scratchformers.training.tables`) with a text column
(``--text-column``, ``text`` by default) and a label column (``--label-column``, ``label``).
Labels may be strings (``"positive"``), integers (``0``, ``1``, ``2``) or a ``datasets``
``ClassLabel`` (a Hub dataset's, whose names they take). The label names become the model's
``config.id2label``: strings in alphabetical order, integers in numerical order (named by
their digits), a ``ClassLabel`` in its own order; or, when the names are the starting
checkpoint's own, in the checkpoint's order, so that its classifier carries on.

Everything is checked before any work, in one line that names the file: a missing column
(with the columns there are), a row without a text or a label (by its number), labels that
are neither strings nor integers, and a training set of one class. Without ``--eval-dataset``
the texts are held out by the hash of their text (see
:func:`scratchformers.training.tables.held_out_by_content`), so a text written twice never
lands on both sides.

Used by :mod:`scratchformers.recipes.lora`, so it needs the ``[train]`` extra; the package's
own modules never import it.
"""

from __future__ import annotations

from argparse import Namespace
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scratchformers.training.console import status
from scratchformers.training.data import DataError
from scratchformers.training.tables import held_out_by_content, read_table, require_columns


@dataclass
class LabelledTexts:
    """Training and held-out texts with their labels (as names), before the names get ids.

    Attributes:
        train_texts, train_labels: the training rows.
        held_out_texts, held_out_labels: the held-out rows.
        names: every label name, in the order that gives them ids (see the module docstring).
        origin: where the rows came from, for the log and the model card.
    """

    train_texts: list[str]
    train_labels: list[str]
    held_out_texts: list[str]
    held_out_labels: list[str]
    names: list[str]
    origin: str

    def ordered_as(self, preferred: Sequence[str] | None) -> LabelledTexts:
        """The same rows, with the label names in ``preferred``'s order when they are the same
        names (a checkpoint's ``id2label``): its classifier then keeps its meaning."""
        if preferred is not None and sorted(preferred) == sorted(self.names):
            self.names = list(preferred)
        return self

    def label_ids(self, labels: list[str]) -> list[int]:
        """``labels`` as their ids in :attr:`names`."""
        index = {name: i for i, name in enumerate(self.names)}
        return [index[label] for label in labels]

    def describe(self) -> str:
        """Rows, held-out size and the labels with their training counts, in one line."""
        counts = Counter(self.train_labels)
        labels = ", ".join(f"{name} ({counts[name]:,})" for name in self.names)
        return (
            f"{self.origin}: {len(self.train_texts):,} training and "
            f"{len(self.held_out_texts):,} held-out texts; labels (training rows): {labels}"
        )


def read_labelled_texts(options: Namespace) -> LabelledTexts:
    """``--dataset``'s texts and labels, with ``--eval-dataset``'s (or ``--eval-fraction`` of
    ``--dataset``'s, by the hash of their text) held out, checked (see the module docstring).
    Raises a :class:`DataError` naming the flag and the file for anything that cannot train
    a classifier."""
    text_column, label_column = options.text_column, options.label_column
    columns = {"--text-column": text_column, "--label-column": label_column}
    train = read_table(options.dataset, "--dataset")
    require_columns(train, columns, options.dataset, "--dataset")
    _check_rows(train, text_column, label_column, options.dataset, "--dataset")
    if options.eval_dataset:
        held_out = read_table(options.eval_dataset, "--eval-dataset", split="validation")
        require_columns(held_out, columns, options.eval_dataset, "--eval-dataset")
        _check_rows(held_out, text_column, label_column, options.eval_dataset, "--eval-dataset")
        origin = f"{options.dataset}, held out: {options.eval_dataset}"
    else:
        train, held_out = held_out_by_content(
            train, options.eval_fraction, [text_column], options.dataset
        )
        origin = f"{options.dataset} ({options.eval_fraction:.0%} held out by content)"
    train_labels, names = _label_names(train, label_column)
    held_out_labels, held_out_names = _label_names(held_out, label_column)
    names += [name for name in held_out_names if name not in names]
    if len(set(train_labels)) < 2:
        raise DataError(
            f"--label-column {label_column!r} of --dataset {options.dataset} holds one class "
            f"({train_labels[0]!r}) in its {len(train_labels):,} training rows; a classifier "
            "needs at least two"
        )
    unseen = sorted(set(held_out_labels) - set(train_labels))
    if unseen:
        status(
            f"warning: held-out labels that no training row has: {', '.join(unseen)}; the "
            "model has a class for each, but learns none of them"
        )
    texts = LabelledTexts(
        train_texts=[str(text) for text in train[text_column]],
        train_labels=train_labels,
        held_out_texts=[str(text) for text in held_out[text_column]],
        held_out_labels=held_out_labels,
        names=names,
        origin=origin,
    )
    status(f"read {texts.describe()}; columns {', '.join(train.column_names)}")
    return texts


def _check_rows(table: Any, text_column: str, label_column: str, source: str, flag: str) -> None:
    """A row without a text or a label, or a label that is neither a string nor an integer,
    stops the run naming the row (counted from 1, the header not counted)."""
    for row, (text, label) in enumerate(
        zip(table[text_column], table[label_column], strict=True), start=1
    ):
        if text is None:
            raise DataError(f"{flag} {source}: row {row} has no {text_column!r}")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(
                f"{flag} {source}: row {row} has no {label_column!r} (its text: "
                f"{str(text)[:60]!r}); every text needs a label"
            )
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataError(
                f"{flag} {source}: the {label_column!r} of row {row} is "
                f"{type(label).__name__} {label!r}; labels must be strings or integers"
            )


def _label_names(table: Any, label_column: str) -> tuple[list[str], list[str]]:
    """Each row's label as a name, and the names in id order: a ``ClassLabel``'s own names
    (in its order), else the values in order: numerical for integers (named by their
    digits), alphabetical for strings."""
    import datasets

    feature = table.features[label_column]
    values = list(table[label_column])
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(value)) for value in values], list(feature.names)
    labels = [str(value) for value in values]
    names = set(labels)
    if all(name.lstrip("-").isdigit() for name in names):
        return labels, sorted(names, key=int)
    return labels, sorted(names)
