"""The bert-mlm training recipe: BERT pretrained from scratch as a masked language model.

    scratchformers train bert-mlm [--preset tiny] [...]
    accelerate launch -m scratchformers.bert_mlm.train [...]

WordPiece, ``[CLS] ... [SEP]`` blocks and BERT's dynamic masking come from the shared
``MaskedLMRecipe``; the metrics are masked-token accuracy and MLM loss on a held-out split,
beside the accuracy of always predicting the most frequent token. This module is what
``--help`` imports, so the model package is imported in ``build_model`` only.

``scratchformers export --format onnx`` writes ``model.onnx`` (:func:`onnx_graphs`): the
masked LM's logits here, and the classifier's for the lora recipe's fine-tuned BERT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scratchformers.training.onnx_export import OnnxGraph, onnx_format, token_example
from scratchformers.training.recipe import ExportFormat, ModelFlag, Preset, RecipeData
from scratchformers.training.text import MaskedLMRecipe

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel

    from scratchformers.bert_mlm import BertForMaskedLM
    from scratchformers.training.settings import TrainingSettings

# BERT's inputs as its tokenizer gives them, each (batch, sequence).
TEXT_AXES = {
    name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")
}


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

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' BERT, and ONNX: ``model.onnx`` (see :func:`onnx_graphs`)."""
        return {**super().export_formats(), "onnx": bert_onnx_format()}


def bert_onnx_format() -> ExportFormat:
    """The ``"onnx"`` export of a BERT with either head (this recipe's and lora's)."""
    return onnx_format(
        onnx_graphs, onnx_info, help="model.onnx: the head's logits, for onnxruntime"
    )


def onnx_graphs(model: PreTrainedModel) -> list[OnnxGraph]:
    """A BERT as one ONNX graph: ``input_ids``, ``attention_mask`` and ``token_type_ids``
    ``(batch, sequence)``, both axes dynamic, as a BERT tokenizer returns them (for one text
    ``token_type_ids`` are zeros, which the project's own tokenizers leave out), ->
    ``logits``: ``(batch, sequence, vocab)`` for a ``BertForMaskedLM`` (fill-mask: read them
    at the ``[MASK]`` positions), ``(batch, num_labels)`` for a
    ``BertForSequenceClassification`` (its ``config.id2label`` names the classes)."""
    config = model.config
    masked_lm = type(model).__name__ == "BertForMaskedLM"

    def forward(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return {"logits": outputs.logits}

    def example(batch: int, length: int) -> dict[str, Any]:
        import torch

        inputs = token_example(config.vocab_size, batch, length, pad_token_id=config.pad_token_id)
        # A second segment on the back half of each row, as a sentence pair has.
        token_type_ids = torch.zeros_like(inputs["input_ids"])
        token_type_ids[:, length // 2 :] = min(1, config.type_vocab_size - 1)
        return {**inputs, "token_type_ids": token_type_ids * inputs["attention_mask"]}

    return [
        OnnxGraph(
            name="model",
            module=model,
            forward=forward,
            example=example,
            dynamic_axes=TEXT_AXES,
            # A classifier reads the first token only, never a padded one.
            real_positions={"logits": "attention_mask"} if masked_lm else {},
            max_length=config.max_position_embeddings,
            description="masked-LM logits at every position"
            if masked_lm
            else "class logits, named by config.id2label",
        )
    ]


def onnx_info(model: PreTrainedModel) -> dict[str, Any]:
    """A classifier's class names, by logit index, for ``onnx.json`` (a masked LM's logits
    are indexed by the tokenizer's vocabulary: nothing to add)."""
    if type(model).__name__ == "BertForMaskedLM":
        return {}
    return {"id2label": {str(k): v for k, v in model.config.id2label.items()}}
