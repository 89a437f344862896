"""Recipes: the model-specific part of a training run, and where they are found.

The loop in :mod:`scratchformers.training.loop` is the same for every model. A recipe says
what differs: how to build the data (and the tokenizer or processor), the model, the batches,
and what to show at the end. Each trainable package keeps its recipe in
``scratchformers/<package>/train.py`` and announces it with an entry point in the
``scratchformers.recipes`` group, so ``scratchformers train --help`` lists what is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import PreTrainedModel

from .data import (
    causal_lm_blocks,
    collate_blocks,
    load_texts,
    split_train_eval,
    train_byte_level_bpe,
)

if TYPE_CHECKING:
    import datasets

    from .settings import TrainingSettings

ENTRY_POINT_GROUP = "scratchformers.recipes"


@dataclass
class Preset:
    """One named size of a recipe: training defaults (any ``TrainingSettings`` field) and
    model options (whatever the recipe's ``build_model`` reads)."""

    training: dict[str, Any]
    model: dict[str, Any]


@dataclass
class RecipeData:
    """What a recipe's ``build_data`` returns."""

    train: datasets.Dataset
    eval: datasets.Dataset
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]
    processor: Any  # the tokenizer or image processor, saved with the model
    description: str  # for the model card: what the data was


class Recipe:
    """Base class of recipes. Subclasses set ``name``, ``description`` and ``presets`` and
    implement ``build_data`` and ``build_model``."""

    name: ClassVar[str]
    description: ClassVar[str]
    presets: ClassVar[dict[str, Preset]]
    default_preset: ClassVar[str] = "tiny"
    auto_class: ClassVar[str] = "AutoModel"  # how users load the result, for the model card

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        raise NotImplementedError

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> PreTrainedModel:
        raise NotImplementedError

    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        """How many items (tokens, for language models) a batch holds, for the items/s rate."""
        return (
            batch["input_ids"].numel() if "input_ids" in batch else len(next(iter(batch.values())))
        )

    def eval_metrics(self, eval_loss: float) -> dict[str, float]:
        """The recipe's metrics, from the mean evaluation loss."""
        return {"eval_loss": eval_loss}

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        """A few outputs to print at the end of training (none by default)."""
        return []


class CausalLMRecipe(Recipe):
    """A causal language model on a text corpus: byte-level BPE, fixed-length blocks, and the
    eval metric perplexity. Model packages subclass it and write ``build_model``."""

    auto_class: ClassVar[str] = "AutoModelForCausalLM"

    sample_prompts: ClassVar[tuple[str, ...]] = (
        "The return statement",
        "A list is",
        "This module provides",
    )

    def build_data(self, settings: TrainingSettings) -> RecipeData:
        options = settings.model
        texts = load_texts(settings.dataset, settings.text_column)
        train_texts, eval_texts = split_train_eval(texts)
        tokenizer = train_byte_level_bpe(train_texts, options["vocab_size"])
        block_size = options["block_size"]
        train = causal_lm_blocks(train_texts, tokenizer, block_size)
        held_out = causal_lm_blocks(eval_texts, tokenizer, block_size)
        if "max_eval_blocks" in options:
            held_out = held_out.select(range(min(len(held_out), options["max_eval_blocks"])))
        source = (
            settings.dataset or "pydoc topics and standard-library docstrings (offline default)"
        )
        return RecipeData(
            train=train,
            eval=held_out,
            collate=collate_blocks,
            processor=tokenizer,
            description=(
                f"{source}: {len(train):,} training and {len(held_out):,} held-out blocks of "
                f"{block_size} tokens, byte-level BPE with {len(tokenizer):,} tokens"
            ),
        )

    def eval_metrics(self, eval_loss: float) -> dict[str, float]:
        return {"eval_loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50.0))}

    def samples(self, model: PreTrainedModel, data: RecipeData) -> list[str]:
        tokenizer = data.processor
        tokenizer.padding_side = "left"
        batch = tokenizer(list(self.sample_prompts), return_tensors="pt", padding=True)
        batch = batch.to(model.device)
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=30,
                do_sample=False,
                repetition_penalty=1.3,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.batch_decode(generated, skip_special_tokens=True)


def installed_recipes() -> dict[str, Callable[[], Recipe]]:
    """Recipe factories by name, from the ``scratchformers.recipes`` entry points."""
    return {entry.name: entry.load for entry in entry_points(group=ENTRY_POINT_GROUP)}


def load_recipe(name: str) -> Recipe:
    """The installed recipe ``name``, or a ``ValueError`` listing the installed ones."""
    recipes = installed_recipes()
    if name not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise ValueError(
            f"no recipe named {name!r} is installed (installed: {known}); recipes come with "
            "the model packages' [train] extra, e.g. pip install 'scratchformers-basicformer[train]'"
        )
    recipe = recipes[name]()
    return recipe() if isinstance(recipe, type) else recipe
