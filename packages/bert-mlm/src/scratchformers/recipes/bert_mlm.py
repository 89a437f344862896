"""The bert-mlm training recipe: BERT pretrained from scratch as a masked language model.

    scratchformers train bert-mlm [--preset tiny] [...]
    accelerate launch -m scratchformers.bert_mlm.train [...]

WordPiece, ``[CLS] ... [SEP]`` blocks and BERT's dynamic masking come from the shared
``MaskedLMRecipe``; the metrics are masked-token accuracy and MLM loss on a held-out split,
beside the accuracy of always predicting the most frequent token. This module is what
``--help`` imports, so the model package is imported in ``build_model`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scratchformers.training.recipe import ModelFlag, Preset, RecipeData
from scratchformers.training.text import MaskedLMRecipe

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel

    from scratchformers.bert_mlm import BertForMaskedLM
    from scratchformers.training.settings import TrainingSettings


class BertMLMRecipe(MaskedLMRecipe):
    """BERT's masked-language-model pretraining on the shared offline corpus."""

    name = "bert-mlm"
    description = (
        "Pretrain a BERT masked language model from scratch, or fine-tune one (--init-from)."
    )
    init_from_formats = (
        "transformers' BertForMaskedLM / BERT folders (such as the Hub's "
        "bert-base-uncased), this project's bert-mlm folders, or a Hub id of either"
    )
    model_flags = {
        **MaskedLMRecipe.model_flags,
        "--width": ModelFlag("hidden_size", "hidden size of every layer"),
        "--depth": ModelFlag("num_hidden_layers", "number of encoder layers"),
        "--heads": ModelFlag("num_attention_heads", "attention heads (must divide --width)"),
    }
    presets = {
        "tiny": Preset.scheduled(
            steps=800,
            batch=32,
            lr=1e-3,
            warmup=50,
            eval_every=200,
            vocab_size=4096,
            block_size=64,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_eval_blocks=256,
        ),
        "small": Preset.scheduled(
            steps=5000,
            batch=64,
            lr=5e-4,
            warmup=300,
            eval_every=500,
            vocab_size=8192,
            block_size=128,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_eval_blocks=512,
        ),
        "base": Preset.scheduled(
            steps=50000,
            batch=128,
            lr=1e-4,
            warmup=5000,
            eval_every=2000,
            vocab_size=16384,
            block_size=512,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_eval_blocks=1024,
        ),
    }

    def build_model(self, settings: TrainingSettings, data: RecipeData) -> BertForMaskedLM:
        from scratchformers.bert_mlm import BertConfig, BertForMaskedLM

        if settings.options.init_from:
            # Shape, weights and (in build_data) tokenizer are the checkpoint's.
            return self.pretrained_model(BertForMaskedLM, settings)

        options, tokenizer = settings.options, data.processor
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers,
            num_attention_heads=options.num_attention_heads,
            intermediate_size=4 * options.hidden_size,
            max_position_embeddings=options.block_size,
            pad_token_id=tokenizer.pad_token_id,
        )
        return BertForMaskedLM(config)

    def export_to_transformers(self, model: PreTrainedModel, out_dir: Path) -> Path:
        """transformers' ``BertForMaskedLM``, with the same outputs."""
        from scratchformers.bert_mlm import export_to_transformers

        return export_to_transformers(model, out_dir)
