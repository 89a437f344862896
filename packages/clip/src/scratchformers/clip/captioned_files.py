"""The user's own image-text pairs: ``--dataset`` / ``--eval-dataset`` of the clip recipe.

Two layouts (see :func:`read_captioned`):

* a table (``.csv``, ``.tsv``, ``.jsonl``, ``.json``, ``.parquet``, or a Hugging Face dataset
  id) with an image column and a caption column; image paths are relative to the table's own
  folder (an id's image column may hold the images themselves);
* a folder of images, each with a caption file of the same name beside it (``cat.jpg`` and
  ``cat.txt``), searched recursively.

Everything that can be wrong with the data is found here, before any training: a missing
column (the columns the table has are named), an empty caption (the column, how many rows and
the first), an image that cannot be read (the file and its row), an image without a caption
file. Each image is decoded once, up front, by the model's own image processor, so the
training images are exactly what inference later feeds the model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from scratchformers.training.console import status
from scratchformers.training.data import DataError
from scratchformers.training.images import decoded, image_files, to_rgb
from scratchformers.training.tables import (
    held_out_by_content,
    is_table_file,
    read_table,
    require_columns,
)

# Processed images up to this many bytes (float32 pixel values) are kept in memory; larger
# sets are decoded again each time they are read (after the check that all of them decode).
PRELOAD_BYTES = 1 << 30
# Images handed to the image processor at once while checking and preloading.
PROCESS_CHUNK = 64
# The label of an image that counts toward no zero-shot class (its caption names none, or
# several).
NO_CLASS = -1


def read_captioned(
    source: str,
    flag: str = "--dataset",
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
) -> datasets.Dataset:
    """The image-text pairs of ``source`` (a table or a folder, see the module docstring), as
    a table of ``image`` (a ``{"path", "bytes"}`` reference), ``caption``, ``key`` (what the
    image is called in the data, for the held-out split by content), ``row`` (1-based, for
    messages: the table's row, or the image's place in the folder's sorted listing) and, with
    ``label_column``, ``label``. Raises a :class:`DataError` naming ``flag`` and ``source``
    when the columns, the captions or the caption files are wrong."""
    path = Path(source).expanduser()
    if path.is_dir():
        if label_column:
            raise DataError(
                f"--label-column reads a table; {flag} {source} is a folder of images and "
                "captions (its zero-shot classes come from the captions)"
            )
        table = _caption_folder(path, flag)
    else:
        table = _caption_table(source, flag, image_column, caption_column, label_column)
    _require_captions(table, flag, source, caption_column)
    return table


def _caption_table(
    source: str, flag: str, image_column: str, caption_column: str, label_column: str | None
) -> datasets.Dataset:
    table = read_table(source, flag, split="validation" if flag == "--eval-dataset" else "train")
    columns = {"--image-column": image_column, "--caption-column": caption_column}
    if label_column:
        columns["--label-column"] = label_column
    require_columns(table, columns, source, flag)
    # Paths in a local file are relative to its folder; an id's relative paths to the cwd.
    base = Path(source).expanduser().parent if is_table_file(source) else Path()
    feature = table.features[image_column]
    if isinstance(feature, datasets.Image):
        # The images themselves (a Hub dataset): read undecoded, decoded by us to name a bad one.
        references = list(
            table.cast_column(image_column, datasets.Image(decode=False))[image_column]
        )
        keys = [
            reference.get("path") or hashlib.sha256(reference["bytes"] or b"").hexdigest()
            for reference in references
        ]
    else:
        keys = ["" if value is None else str(value) for value in table[image_column]]
        references = [{"path": str(base / key) if key else "", "bytes": None} for key in keys]
    captions = table[caption_column]
    fields: dict[str, list[Any]] = {
        "image": references,
        "caption": ["" if caption is None else str(caption) for caption in captions],
        "key": keys,
        "row": list(range(1, len(table) + 1)),
    }
    if label_column:
        fields["label"] = ["" if value is None else str(value) for value in table[label_column]]
    return datasets.Dataset.from_dict(fields)


def _caption_folder(folder: Path, flag: str) -> datasets.Dataset:
    images = image_files(folder)
    if not images:
        raise DataError(
            f"{flag} {folder} holds no images (.png, .jpg, .webp, ... files, each with a "
            "same-named .txt caption beside it)"
        )
    uncaptioned = [image for image in images if not image.with_suffix(".txt").is_file()]
    if uncaptioned:
        first = uncaptioned[0].relative_to(folder)
        raise DataError(
            f"{flag} {folder}: {len(uncaptioned)} of its {len(images)} images have no caption "
            f"file beside them (first: {first} needs {first.with_suffix('.txt')})"
        )
    return datasets.Dataset.from_dict(
        {
            "image": [{"path": str(image), "bytes": None} for image in images],
            "caption": [image.with_suffix(".txt").read_text(encoding="utf-8") for image in images],
            # Relative paths: the split does not move when the folder does.
            "key": [image.relative_to(folder).as_posix() for image in images],
            "row": list(range(1, len(images) + 1)),
        }
    )


def _require_captions(table: datasets.Dataset, flag: str, source: str, column: str) -> None:
    empty = [
        row for row, text in zip(table["row"], table["caption"], strict=True) if not text.strip()
    ]
    if not empty:
        return
    where = "caption files" if Path(source).is_dir() else f"caption column {column!r}"
    share = f"all {len(table)}" if len(empty) == len(table) else f"{len(empty)} of {len(table)}"
    raise DataError(
        f"{flag} {source}: the {where} is empty in {share} rows (first: row {empty[0]}); "
        "every image needs a caption"
        + ("" if Path(source).is_dir() else " (--caption-column names the right column)")
    )


def captioned_splits(
    options: Any, *, label_column: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """The training and held-out pairs of ``--dataset`` and ``--eval-dataset`` (or
    ``--eval-fraction`` of ``--dataset``, by the hash of each pair's image name and caption),
    and a description of them for the log and the model card."""
    columns = {
        "image_column": options.image_column,
        "caption_column": options.caption_column,
        "label_column": label_column,
    }
    train = read_captioned(options.dataset, "--dataset", **columns)
    if options.eval_dataset:
        held_out = read_captioned(options.eval_dataset, "--eval-dataset", **columns)
        origin = f"{options.dataset}, held out: {options.eval_dataset}"
    else:
        train, held_out = held_out_by_content(
            train, options.eval_fraction, ["key", "caption"], options.dataset
        )
        origin = f"{options.dataset} ({options.eval_fraction:.0%} held out by content)"
    status(
        f"read {origin}: {len(train):,} training and {len(held_out):,} held-out image-text "
        f"pairs (image column {options.image_column!r}, caption column {options.caption_column!r})"
    )
    return train, held_out, origin


def caption_classes(captions: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Each caption's zero-shot class: the index of the one name in ``class_names`` it
    mentions (as whole words, ignoring case), or :data:`NO_CLASS` when it mentions none or
    several."""
    patterns = [
        re.compile(rf"(?<!\w){re.escape(name.strip())}(?!\w)", re.IGNORECASE)
        for name in class_names
    ]
    classes = []
    for caption in captions:
        found = [index for index, pattern in enumerate(patterns) if pattern.search(caption)]
        classes.append(found[0] if len(found) == 1 else NO_CLASS)
    return classes


def label_classes(
    table: datasets.Dataset, class_names: Sequence[str], flag: str, source: str
) -> list[int]:
    """Each row's zero-shot class from its ``label`` value, which must be one of
    ``class_names`` (a :class:`DataError` names the first row whose label is not)."""
    index = {name.strip(): i for i, name in enumerate(class_names)}
    classes = []
    for row, label in zip(table["row"], table["label"], strict=True):
        if label.strip() not in index:
            raise DataError(
                f"{flag} {source} row {row}: the label {label!r} is not one of --zero-shot-labels "
                f"({', '.join(index)})"
            )
        classes.append(index[label.strip()])
    return classes


class CaptionedFiles(torch.utils.data.Dataset):
    """Pairs read by :func:`read_captioned`, as the model takes them: ``{"pixel_values"
    (channels, height, width), "input_ids", "zero_shot_label"}``.

    Every image is decoded and processed here, by ``image_processor`` (the checkpoint's, or
    the run's own), so that a file that cannot be read stops the run before any training,
    named with its row; sets whose processed images fit in ``preload_bytes`` keep them.
    Captions are tokenized with ``tokenizer``, cut to ``max_length`` tokens.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        image_processor: Any,
        tokenizer: Any,
        max_length: int,
        *,
        flag: str,
        source: str,
        zero_shot_labels: Sequence[int] | None = None,
        preload_bytes: int = PRELOAD_BYTES,
    ) -> None:
        self.image_processor = image_processor
        self.flag, self.source = flag, source
        self.references: list[dict[str, Any]] = list(table["image"])
        self.rows: list[int] = list(table["row"])
        self.captions: list[str] = [caption.strip() for caption in table["caption"]]
        self.input_ids: list[list[int]] = tokenizer(
            self.captions, truncation=True, max_length=max_length
        )["input_ids"]
        self.zero_shot_labels = list(zero_shot_labels or [NO_CLASS] * len(self.captions))
        chunks = [
            self._process(range(start, min(start + PROCESS_CHUNK, len(self))))
            for start in range(0, len(self), PROCESS_CHUNK)
        ]
        pixels = torch.cat(chunks) if chunks else torch.empty(0)
        self._pixels: torch.Tensor | None = (
            pixels if pixels.numel() * pixels.element_size() <= preload_bytes else None
        )

    def _process(self, indices: Sequence[int]) -> torch.Tensor:
        images = []
        for index in indices:
            try:
                images.append(to_rgb(decoded(self.references[index])))
            except DataError as error:
                raise DataError(
                    f"{self.flag} {self.source} row {self.rows[index]}: {error}"
                ) from None
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"].float()

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = self._pixels[index] if self._pixels is not None else self._process([index])[0]
        return {
            "pixel_values": pixels,
            "input_ids": self.input_ids[index],
            "zero_shot_label": self.zero_shot_labels[index],
        }


class CaptionedFileBatches:
    """Stacks :class:`CaptionedFiles` into ``pixel_values``, right-padded ``input_ids`` with
    their ``attention_mask``, and ``zero_shot_label``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = self.tokenizer.pad(
            {"input_ids": [e["input_ids"] for e in examples]},
            padding_side="right",
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "input_ids": texts["input_ids"],
            "attention_mask": texts["attention_mask"],
            "zero_shot_label": torch.tensor([e["zero_shot_label"] for e in examples]),
        }
