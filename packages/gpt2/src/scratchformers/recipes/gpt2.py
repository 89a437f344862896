"""The GPT-2 training recipe: GPT-2 trained from scratch as a causal language model.

    scratchformers train gpt2 [--preset tiny] [...]
    accelerate launch -m scratchformers.gpt2.train [...]

The result is a scratchformers GPT-2; ``scratchformers export`` (or
``scratchformers.gpt2.export_to_transformers``) turns it into a directory for transformers'
``GPT2LMHeadModel`` and ``pipeline("text-generation")``. This module is what
``scratchformers train gpt2 --help`` imports, so the model package is imported in
``build_model`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scratchformers.training.recipe import ModelFlag, Preset, RecipeData
from scratchformers.training.text import CausalLMRecipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from scratchformers.gpt2 import GPT2LMHeadModel
    from scratchformers.training.settings import TrainingSettings


class GPT2Recipe(CausalLMRecipe):
    """GPT-2 on the same offline corpus and byte-level BPE as the BasicFormer recipe."""

    name = "gpt2"
    description = (
        "Train a GPT-2 causal language model from scratch, or fine-tune one (--init-from)."
    )
    init_from_formats = (
        "transformers' GPT2LMHeadModel folders (such as the Hub's gpt2), this project's "
        "gpt2 folders, or a Hub id of either"
    )
    model_flags = {
        **CausalLMRecipe.model_flags,
        "--width": ModelFlag("n_embd", "hidden size of every layer"),
        "--depth": ModelFlag("n_layer", "number of transformer blocks"),
        "--heads": ModelFlag("n_head", "attention heads (must divide --width)"),
    }
    presets = {
        "tiny": Preset.scheduled(
            steps=800,
            batch=16,
            lr=3e-3,
            warmup=50,
            eval_every=100,
            vocab_size=2048,
            block_size=64,
            n_embd=128,
            n_layer=2,
            n_head=4,
            max_eval_blocks=256,
        ),
        "small": Preset.scheduled(
            steps=3000,
            batch=32,
            lr=1e-3,
            warmup=200,
            eval_every=250,
            vocab_size=8192,
            block_size=256,
            n_embd=384,
            n_layer=6,
            n_head=6,
            max_eval_blocks=512,
        ),
        "base": Preset.scheduled(
            steps=20000,
            batch=64,
            lr=6e-4,
            warmup=1000,
            eval_every=1000,
            vocab_size=16384,
            block_size=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            max_eval_blocks=1024,
        ),
    }

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> GPT2LMHeadModel:
        from scratchformers.gpt2 import GPT2Config, GPT2LMHeadModel

        if settings.options.init_from:
            # Shape, weights and (in build_data) tokenizer are the checkpoint's.
            return self.pretrained_model(GPT2LMHeadModel, settings)

        options, tokenizer = settings.options, data.processor
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=options.block_size,
            n_embd=options.n_embd,
            n_layer=options.n_layer,
            n_head=options.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``GPT2LMHeadModel``, with the same outputs."""
        from scratchformers.gpt2 import export_to_transformers

        return export_to_transformers(model, out_dir)
