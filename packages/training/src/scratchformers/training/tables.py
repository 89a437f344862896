"""The user's own data as a table: ``--dataset`` / ``--eval-dataset`` for every recipe.

A recipe names the columns it reads (``--text-column``, ``--label-column``, ...); this module
reads the file into a ``datasets`` table and checks it before any work starts. Formats, by the
file's suffix: ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` (one object per line, or a list),
``.parquet``. Anything else that is not a local path is a Hugging Face dataset id, read with
``datasets.load_dataset`` (which also reads a local folder of such files, so the offline tests
take the same road as an id).

Held out, when there is no ``--eval-dataset``: the rows whose content hashes into the first
``--eval-fraction`` of the hash space. A row's place in the split depends only on what it
says, never on the row order, the seed or how many rows there are, so adding rows to a file
never moves an old training row into the held-out set; duplicated rows land on the same side,
so no held-out row is also a training row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import status
from .data import DataError

if TYPE_CHECKING:
    import datasets

# Suffix -> (datasets' packaged builder, its options).
TABLE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def is_table_file(source: str | None) -> bool:
    """Whether ``source`` names a file of one of the :data:`TABLE_FORMATS` by its suffix."""
    return source is not None and Path(source).suffix.lower() in TABLE_FORMATS


def read_table(
    source: str,
    flag: str = "--dataset",
    *,
    split: str = "train",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """The table ``source`` names: a local ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet``
    file, or a Hugging Face dataset id (or local folder ``load_dataset`` reads), its ``split``.

    ``streaming`` gives an ``IterableDataset`` that reads the rows as they are needed. A
    missing file, an unknown suffix, a file that does not parse or a table with no rows
    raises a :class:`DataError` naming ``flag`` and ``source``.
    """
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in TABLE_FORMATS:
            raise DataError(
                f"{flag} {source}: cannot read a {suffix or 'suffixless'} file as a table; use "
                f"one of {', '.join(TABLE_FORMATS)}"
            )
        if _holds_no_rows(path):
            raise DataError(f"{flag} {source} holds no rows")
        builder, options = TABLE_FORMATS[suffix]
        arguments: dict[str, Any] = {"data_files": str(path), "split": "train", **options}
        name = builder
    elif path.exists() or _looks_like_a_path(source):
        if not path.exists():
            raise DataError(f"{flag} {source} does not exist")
        arguments, name = {"split": split}, str(path)
    else:
        arguments, name = {"split": split}, source
    try:
        table = datasets.load_dataset(name, streaming=streaming, **arguments)
    except Exception as error:
        where = "a local file or folder" if path.exists() else "a Hugging Face dataset"
        raise DataError(
            f"{flag} {source} could not be read as {where} ({type(error).__name__}: {error})"
        ) from error
    if not streaming and len(table) == 0:
        raise DataError(f"{flag} {source} holds no rows")
    return table


def _holds_no_rows(path: Path) -> bool:
    """Whether a text table is empty, or only a csv header: ``datasets`` reports those with
    errors of its own that do not say so."""
    if path.suffix.lower() == ".parquet":
        return False  # a parquet file says its row count; an empty one loads as zero rows
    with path.open(encoding="utf-8", errors="replace") as lines:
        content = [line for _, line in zip(range(2), (x for x in lines if x.strip()), strict=False)]
    header_only = path.suffix.lower() in (".csv", ".tsv") and len(content) == 1
    return not content or header_only


def _looks_like_a_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a missing path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or bool(Path(source).suffix)


def require_columns(
    table: datasets.Dataset | datasets.IterableDataset,
    columns: dict[str, str],
    source: str,
    flag: str = "--dataset",
) -> None:
    """Raise a :class:`DataError` when ``table`` lacks one of ``columns`` (the flag that names
    it -> the column, ``{"--text-column": "text"}``), naming the columns it has."""
    have = list(table.column_names or ())
    for column_flag, column in columns.items():
        if column not in have:
            raise DataError(
                f"{flag} {source} has no column {column!r} (its columns: {', '.join(have)}); "
                f"name the right one with {column_flag}"
            )


def content_hash(row: dict[str, Any], columns: Sequence[str]) -> float:
    """Where a row falls in [0, 1), from the content of its ``columns`` only."""
    text = json.dumps([str(row[column]) for column in columns], ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out_by_content(
    table: datasets.Dataset,
    fraction: float,
    columns: Sequence[str],
    source: str,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``table`` split into training and held-out rows by the hash of each row's ``columns``
    (the held-out ones hash below ``fraction``); see the module docstring. Raises a
    :class:`DataError` naming ``--eval-fraction`` when it is not in (0, 1) or leaves either
    part empty."""
    if not 0 < fraction < 1:
        raise DataError(f"--eval-fraction must be between 0 and 1, got {fraction}")
    held = [
        index
        for index, row in enumerate(table.select_columns(list(columns)))
        if content_hash(row, columns) < fraction
    ]
    held_set = set(held)
    train = [index for index in range(len(table)) if index not in held_set]
    if not held or not train:
        empty = "held-out" if not held else "training"
        raise DataError(
            f"--eval-fraction {fraction} of the {len(table):,} rows of {source} leaves the "
            f"{empty} part empty; give more rows, another --eval-fraction, or --eval-dataset"
        )
    return table.select(train), table.select(held)


def train_and_held_out(
    options: Any,
    columns: dict[str, str],
    *,
    hash_columns: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """The training and held-out tables of ``--dataset`` (``options.dataset``) and either
    ``--eval-dataset`` or ``--eval-fraction`` of the training file, each checked for
    ``columns`` (flag -> column); and a description of what was read, for the log and card.
    The split hashes ``hash_columns`` (default: every column named in ``columns``)."""
    train = read_table(options.dataset, "--dataset")
    require_columns(train, columns, options.dataset, "--dataset")
    if options.eval_dataset:
        held_out = read_table(options.eval_dataset, "--eval-dataset", split="validation")
        require_columns(held_out, columns, options.eval_dataset, "--eval-dataset")
        origin = f"{options.dataset} ({len(train):,} rows), held out: {options.eval_dataset}"
    else:
        train, held_out = held_out_by_content(
            train, options.eval_fraction, list(hash_columns or columns.values()), options.dataset
        )
        origin = f"{options.dataset} ({options.eval_fraction:.0%} held out by content)"
    status(
        f"read {origin}: {len(train):,} training and {len(held_out):,} held-out rows, "
        f"columns {', '.join(train.column_names)}"
    )
    return train, held_out, origin
