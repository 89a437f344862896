"""The vit training recipe: a Vision Transformer image classifier trained from scratch.

    scratchformers train vit [--preset tiny] [--dataset FOLDER] [...]
    accelerate launch -m scratchformers.vit.train [...]

The images (generated shapes by default, offline; or a folder with one subfolder per class),
their augmentation, the image processor saved with the model, top-1 accuracy against the
most-frequent-class baseline and the confusion matrix come from the shared
``ImageClassificationRecipe``. This module is what ``--help`` imports, so the model package
is imported in ``build_model`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scratchformers.training.recipe import ModelFlag, Preset, RecipeData
from scratchformers.training.vision import ImageClassificationRecipe

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel

    from scratchformers.training.settings import TrainingSettings
    from scratchformers.vit import ViTForImageClassification


class ViTRecipe(ImageClassificationRecipe):
    """ViT (class token, pre-norm layers, linear classifier) on the shared image recipe."""

    name = "vit"
    description = "Train a Vision Transformer image classifier from scratch."
    model_flags = {
        **ImageClassificationRecipe.model_flags,
        "--patch-size": ModelFlag("patch_size", "side of the square patches, in pixels"),
        "--width": ModelFlag("hidden_size", "hidden size of every layer"),
        "--depth": ModelFlag("num_hidden_layers", "number of encoder layers"),
        "--heads": ModelFlag("num_attention_heads", "attention heads (must divide --width)"),
        "--pooling": ModelFlag(
            "pooling", "what the classifier reads: cls (the class token) or mean", str
        ),
    }
    presets = {
        # 92.6% of held-out shapes right (chance: 16.6%) in about 4 minutes on 2 CPU cores;
        # patches of 4 pixels (36 of them) learn the shapes far faster than 6-pixel ones.
        "tiny": Preset.scheduled(
            steps=2000,
            batch=64,
            lr=1e-3,
            warmup=30,
            eval_every=250,
            image_size=24,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            pooling="cls",
            train_images=20000,
            eval_images=1000,
        ),
        "small": Preset.scheduled(
            steps=4000,
            batch=128,
            lr=1e-3,
            warmup=200,
            eval_every=400,
            image_size=32,
            patch_size=4,
            hidden_size=192,
            num_hidden_layers=6,
            num_attention_heads=3,
            pooling="cls",
            train_images=40000,
            eval_images=2000,
        ),
        "base": Preset.scheduled(
            steps=50000,
            batch=256,
            lr=5e-4,
            warmup=5000,
            eval_every=2000,
            image_size=224,
            patch_size=16,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            pooling="cls",
            train_images=100000,
            eval_images=5000,
        ),
    }

    def build_model(
        self, settings: TrainingSettings, data: RecipeData
    ) -> ViTForImageClassification:
        from scratchformers.vit import ViTConfig, ViTForImageClassification

        options = settings.options
        config = ViTConfig(
            image_size=options.image_size,
            patch_size=options.patch_size,
            num_channels=3,
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers,
            num_attention_heads=options.num_attention_heads,
            intermediate_size=4 * options.hidden_size,
            pooling=options.pooling,
            **self.label_config(data),
        )
        return ViTForImageClassification(config)

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``ViTForImageClassification``, with the same outputs (class-token
        pooling only: transformers has no mean-pooled ViT)."""
        from scratchformers.vit import export_to_transformers

        return export_to_transformers(model, out_dir)
