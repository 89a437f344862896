"""Captioned shapes with held-out combinations: the offline image-text data of the clip recipe.

The images are the vit recipe's generated shapes (``scratchformers.training.shapes``), each
captioned from its attributes: "a small red circle at the top left". Six of the 36 colour and
shape pairs never appear together in training (:data:`HELD_OUT_PAIRS`: each colour once and
each shape once, so every word is still seen, only never in that pair). The held-out images
show only those pairs. Classifying them zero-shot among all 36 pairs therefore needs what CLIP
is for: composing "red" and "circle", each learnt from other images, into a picture never
seen. Chance is 1 in 36.

Training images are not flipped or shifted: the captions say where the shape is, and a flip
would make "left" a lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch

from scratchformers.training.images import ImageBatches, ImageExamples
from scratchformers.training.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    shape_caption,
    shapes_dataset,
)

# (colour, shape) pairs that training never shows together: colour i with shape i + 1.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (colour, SHAPES[(i + 1) % len(SHAPES)]) for i, colour in enumerate(COLOURS)
)
# The zero-shot classes: every colour and shape pair, as it reads in a caption.
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)


def caption_templates() -> list[str]:
    """One template per size and position, worded as the captions are ("a small {} at the
    top left"), for CLIP's prompt ensembling over what the class name does not say."""
    templates = []
    for size in SIZES:
        for position in POSITIONS:
            example = {"size": size, "colour": "COLOUR", "shape": "SHAPE", "position": position}
            templates.append(shape_caption(example).replace("COLOUR SHAPE", "{}"))
    return templates


def captioned_shapes(
    num_images: int, image_size: int, seed: int | str, held_out: bool
) -> datasets.Dataset:
    """``num_images`` shapes of the held-out pairs (``held_out``) or of the other 30, with a
    ``caption`` column and ``pair``, the index of the image's class in :data:`CLASS_NAMES`.
    Drawn in rounds from :func:`shapes_dataset` with seeds derived from ``seed``, so the same
    call gives the same images."""
    kept: list[datasets.Dataset] = []
    count, round_ = 0, 0
    share = len(HELD_OUT_PAIRS) / len(CLASS_NAMES)
    share = share if held_out else 1 - share
    while count < num_images:
        wanted = num_images - count
        drawn = shapes_dataset(int(wanted / share * 1.1) + 16, image_size, seed=f"{seed} {round_}")
        pairs = list(zip(drawn["colour"], drawn["shape"], strict=True))
        rows = [i for i, pair in enumerate(pairs) if (pair in HELD_OUT_PAIRS) == held_out][:wanted]
        kept.append(drawn.select(rows))
        count += len(rows)
        round_ += 1
    images = datasets.concatenate_datasets(kept)
    captions = [
        shape_caption(row) for row in images.select_columns(["size", "colour", "shape", "position"])
    ]
    pairs = [
        CLASS_NAMES.index(f"{c} {s}")
        for c, s in zip(images["colour"], images["shape"], strict=True)
    ]
    return images.add_column("caption", captions).add_column("pair", pairs)


class CaptionedImages(torch.utils.data.Dataset):
    """Images (as :class:`ImageExamples` reads them, never augmented) with their caption's
    token ids and their pair: ``{"pixels", "label", "input_ids", "pair"}``."""

    def __init__(self, dataset: datasets.Dataset, image_size: int, tokenizer: Any) -> None:
        self.images = ImageExamples(dataset, image_size)
        self.captions: list[str] = list(dataset["caption"])
        self.pairs: list[int] = list(dataset["pair"])
        self.input_ids: list[list[int]] = tokenizer(self.captions, truncation=True)["input_ids"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.images[index], "input_ids": self.input_ids[index], "pair": self.pairs[index]}


class CaptionBatches:
    """Stacks :class:`CaptionedImages` into ``pixel_values`` (normalised as the image
    processor does), right-padded ``input_ids`` with their ``attention_mask``, and ``pair``."""

    def __init__(self, tokenizer: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        self.tokenizer = tokenizer
        self.images = ImageBatches(mean, std)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = self.images([{"pixels": e["pixels"], "label": e["label"]} for e in examples])
        texts = self.tokenizer.pad(
            {"input_ids": [e["input_ids"] for e in examples]}, return_tensors="pt"
        )
        return {
            "pixel_values": images["pixel_values"],
            "input_ids": texts["input_ids"],
            "attention_mask": texts["attention_mask"],
            "pair": torch.tensor([e["pair"] for e in examples]),
        }
