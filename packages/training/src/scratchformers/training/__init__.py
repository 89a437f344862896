"""scratchformers.training: the shared Accelerate training loop, data helpers and CLI.

Importing this package is cheap: the names below are imported on first use (PEP 562), so that
``scratchformers --help`` and a recipe's declaration (its presets and flags) never wait for
torch, transformers or Accelerate. ``from scratchformers.training import train`` imports the
loop and everything it needs, as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_EXPORTS = {
    "run_recipe": "cli",
    "CheckpointError": "checkpoints",
    "DataError": "data",
    "load_tokenizer": "data",
    "masked_lm_blocks": "data",
    "MaskingCollator": "data",
    "train_wordpiece": "data",
    "causal_lm_blocks": "data",
    "collate_blocks": "data",
    "load_texts": "data",
    "python_docs_corpus": "data",
    "split_train_eval": "data",
    "train_byte_level_bpe": "data",
    "gather_with_gradients": "distributed",
    "Trainer": "loop",
    "TrainingError": "errors",
    "TrainingInterrupted": "errors",
    "TrainingResult": "loop",
    "train": "loop",
    "CausalLMRecipe": "text",
    "MaskedLMRecipe": "text",
    "TextRecipe": "text",
    "EvalResults": "recipe",
    "Evaluation": "recipe",
    "ExportFormat": "recipe",
    "ModelFlag": "recipe",
    "Preset": "recipe",
    "Recipe": "recipe",
    "RecipeData": "recipe",
    "SizedDataset": "recipe",
    "installed_recipes": "recipe",
    "load_recipe": "recipe",
    "parameter_groups": "recipe",
    "ImageClassificationRecipe": "vision",
    "ImageRecipe": "vision",
    "ImageBatches": "images",
    "ImageExamples": "images",
    "ImageSplits": "images",
    "image_processor": "images",
    "image_splits": "images",
    "load_image_folder": "images",
    "to_rgb": "images",
    "SHAPES": "shapes",
    "draw_shape": "shapes",
    "shape_caption": "shapes",
    "shapes_dataset": "shapes",
    "SENTIMENTS": "reviews",
    "Clause": "reviews",
    "Review": "reviews",
    "reviews_dataset": "reviews",
    "status": "console",
    "TrainingSettings": "settings",
    "parse_settings": "settings",
}

__all__ = [
    "SENTIMENTS",
    "SHAPES",
    "CausalLMRecipe",
    "CheckpointError",
    "Clause",
    "DataError",
    "EvalResults",
    "Evaluation",
    "ExportFormat",
    "ImageBatches",
    "ImageClassificationRecipe",
    "ImageExamples",
    "ImageRecipe",
    "ImageSplits",
    "MaskedLMRecipe",
    "MaskingCollator",
    "ModelFlag",
    "Preset",
    "Recipe",
    "RecipeData",
    "Review",
    "SizedDataset",
    "TextRecipe",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "TrainingResult",
    "TrainingSettings",
    "causal_lm_blocks",
    "collate_blocks",
    "draw_shape",
    "gather_with_gradients",
    "image_processor",
    "image_splits",
    "installed_recipes",
    "load_image_folder",
    "load_recipe",
    "load_texts",
    "load_tokenizer",
    "masked_lm_blocks",
    "parameter_groups",
    "parse_settings",
    "python_docs_corpus",
    "reviews_dataset",
    "run_recipe",
    "shape_caption",
    "shapes_dataset",
    "split_train_eval",
    "status",
    "to_rgb",
    "train",
    "train_byte_level_bpe",
    "train_wordpiece",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .checkpoints import CheckpointError
    from .cli import run_recipe
    from .console import status
    from .data import (
        DataError,
        MaskingCollator,
        causal_lm_blocks,
        collate_blocks,
        load_texts,
        load_tokenizer,
        masked_lm_blocks,
        python_docs_corpus,
        split_train_eval,
        train_byte_level_bpe,
        train_wordpiece,
    )
    from .distributed import gather_with_gradients
    from .errors import TrainingError, TrainingInterrupted
    from .images import (
        ImageBatches,
        ImageExamples,
        ImageSplits,
        image_processor,
        image_splits,
        load_image_folder,
        to_rgb,
    )
    from .loop import Trainer, TrainingResult, train
    from .recipe import (
        EvalResults,
        Evaluation,
        ModelFlag,
        Preset,
        Recipe,
        RecipeData,
        SizedDataset,
        installed_recipes,
        load_recipe,
        parameter_groups,
    )
    from .reviews import SENTIMENTS, Clause, Review, reviews_dataset
    from .settings import TrainingSettings, parse_settings
    from .shapes import SHAPES, draw_shape, shape_caption, shapes_dataset
    from .text import CausalLMRecipe, MaskedLMRecipe, TextRecipe
    from .vision import ImageClassificationRecipe, ImageRecipe
