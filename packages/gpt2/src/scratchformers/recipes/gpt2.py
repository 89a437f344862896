"""The GPT-2 training recipe: GPT-2 trained from scratch as a causal language model.

    scratchformers train gpt2 [--preset tiny] [...]
    accelerate launch -m scratchformers.gpt2.train [...]

The result is a scratchformers GPT-2; ``scratchformers export`` (or
``scratchformers.gpt2.export_to_transformers``) turns it into a directory for transformers'
``GPT2LMHeadModel`` and ``pipeline("text-generation")``, and ``--format onnx`` into
``model.onnx`` and ``model_with_past.onnx`` (with a KV cache) for onnxruntime
(:func:`onnx_graphs`). This module is what ``scratchformers train gpt2 --help`` imports, so
the model package is imported in ``build_model`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchformers.training.onnx_export import OnnxGraph, onnx_format, token_example
from scratchformers.training.recipe import ExportFormat, ModelFlag, Preset, RecipeData
from scratchformers.training.text import CausalLMRecipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from scratchformers.gpt2 import GPT2LMHeadModel
    from scratchformers.training.settings import TrainingSettings

# The text-generation inputs of the ONNX graph, both (batch, sequence).
TEXT_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
}


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

    def export_formats(self) -> dict[str, ExportFormat]:
        """transformers' GPT-2, and ONNX: ``model.onnx`` and ``model_with_past.onnx`` (see
        :func:`onnx_graphs`)."""
        return {
            **super().export_formats(),
            "onnx": onnx_format(
                onnx_graphs,
                onnx_info,
                help="model.onnx and model_with_past.onnx (a KV cache): logits, for onnxruntime",
            ),
        }


def onnx_graphs(model: PreTrainedModel) -> list[OnnxGraph]:
    """GPT-2 as two ONNX graphs, every axis but the model's sizes dynamic:

    * ``model``: ``input_ids`` and ``attention_mask`` ``(batch, sequence)`` -> ``logits``
      ``(batch, sequence, vocab)``; a decoding loop feeds it the whole sequence at each step.
    * ``model_with_past``: the same, plus ``past_key_values.<layer>.key`` / ``.value``
      ``(batch, heads, past, head_dim)`` for every layer (``past`` 0 for the prompt), with
      ``attention_mask`` ``(batch, past + sequence)`` -> ``logits`` and the grown cache,
      ``present.<layer>.key`` / ``.value`` ``(batch, heads, past + sequence, head_dim)``,
      to feed back with the next token only.

    Prompts are padded on the left, as for ``generate``: positions follow the mask. The gpt2
    README shows both loops."""
    from transformers import DynamicCache

    config = model.config
    layers, heads = config.n_layer, config.n_head
    head_dim = config.n_embd // heads
    cache_names = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]

    def forward(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return {"logits": logits}

    def example(batch: int, length: int) -> dict[str, Any]:
        return token_example(
            config.vocab_size, batch, length, padding="left", pad_token_id=config.pad_token_id
        )

    def forward_with_past(input_ids: Any, attention_mask: Any, **past: Any) -> dict[str, Any]:
        cache = DynamicCache(config=config)
        for layer in range(layers):
            cache.update(
                past[f"past_key_values.{layer}.key"], past[f"past_key_values.{layer}.value"], layer
            )
        outputs = model(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True
        )
        present = {}
        for layer, cached in enumerate(outputs.cache.layers):
            present[f"present.{layer}.key"] = cached.keys
            present[f"present.{layer}.value"] = cached.values
        return {"logits": outputs.logits, **present}

    def example_with_past(batch: int, length: int) -> dict[str, Any]:
        import torch

        # A cache three tokens longer than the new tokens (the export must keep the two
        # lengths apart), holding all the left padding, so that every new token is real.
        past = length + 3
        inputs = token_example(
            config.vocab_size,
            batch,
            past + length,
            padding="left",
            pad_token_id=config.pad_token_id,
        )
        generator = torch.Generator().manual_seed(batch * 100 + length)
        cache = {
            f"past_key_values.{name}": torch.randn(
                batch, heads, past, head_dim, generator=generator
            )
            for name in cache_names
        }
        return {
            "input_ids": inputs["input_ids"][:, past:],
            "attention_mask": inputs["attention_mask"],
            **cache,
        }

    cache_axes = {f"past_key_values.{name}": {0: "batch", 2: "past"} for name in cache_names}
    return [
        OnnxGraph(
            name="model",
            module=model,
            forward=forward,
            example=example,
            dynamic_axes=TEXT_AXES,
            real_positions={"logits": "attention_mask"},
            max_length=config.n_positions,
            description="next-token logits at every position (no KV cache)",
        ),
        OnnxGraph(
            name="model_with_past",
            module=model,
            forward=forward_with_past,
            example=example_with_past,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "past_and_sequence"},
                **cache_axes,
            },
            # past + new = 2 * length + 3 tokens within the position table.
            max_length=(config.n_positions - 3) // 2,
            description="next-token logits of the new tokens and the grown KV cache",
        ),
    ]


def onnx_info(model: PreTrainedModel) -> dict[str, Any]:
    """What a decoding loop needs beside the graphs: the special tokens, the context, and the
    shape of an empty cache (``past`` 0) for the first call of ``model_with_past``."""
    config = model.config
    return {
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": config.n_positions,
        "num_layers": config.n_layer,
        "cache_shape": ["batch", config.n_head, "past", config.n_embd // config.n_head],
    }
