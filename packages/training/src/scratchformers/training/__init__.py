"""scratchformers.training: the shared Accelerate training loop, data helpers and CLI."""

from .cli import run_recipe
from .data import (
    DataError,
    causal_lm_blocks,
    collate_blocks,
    load_texts,
    python_docs_corpus,
    split_train_eval,
    train_byte_level_bpe,
)
from .distributed import gather_with_gradients
from .loop import Trainer, TrainingError, TrainingResult, train
from .recipe import (
    CausalLMRecipe,
    EvalResults,
    Preset,
    Recipe,
    RecipeData,
    SizedDataset,
    installed_recipes,
    load_recipe,
    parameter_groups,
)
from .settings import TrainingSettings, parse_settings

__all__ = [
    "CausalLMRecipe",
    "DataError",
    "EvalResults",
    "Preset",
    "Recipe",
    "RecipeData",
    "SizedDataset",
    "Trainer",
    "TrainingError",
    "TrainingResult",
    "TrainingSettings",
    "causal_lm_blocks",
    "collate_blocks",
    "gather_with_gradients",
    "installed_recipes",
    "load_recipe",
    "load_texts",
    "parameter_groups",
    "parse_settings",
    "python_docs_corpus",
    "run_recipe",
    "split_train_eval",
    "train",
    "train_byte_level_bpe",
]
