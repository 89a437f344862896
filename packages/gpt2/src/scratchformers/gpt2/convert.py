"""transformers' GPT-2 checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The config is the same, field for field. The weights differ in layout, not in numbers:

* transformers' GPT-2 uses ``Conv1D`` layers, ``y = x @ W + b`` with ``W`` of shape
  ``(in, out)``; ``nn.Linear`` stores ``(out, in)``. Every projection is transposed.
* q, k and v are one fused ``c_attn`` there (``W`` of shape ``(n_embd, 3 * n_embd)``, columns
  in the order q, k, v), and ``attn.c_proj`` is the output projection; the shared attention
  core has ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``.
* Old checkpoints also hold the causal-mask buffers ``attn.bias`` and ``attn.masked_bias``,
  which are not weights.

Everything else (embeddings, LayerNorms, the MLP's names) is the same. A ``GPT2Model`` file has
no ``transformer.`` prefix and no ``lm_head``; transformers' loader adds or strips the prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel
from transformers.core_model_loading import Chunk, Transpose, WeightConverter, WeightRenaming

from scratchformers.core_attention.interop import (
    CheckpointConverter,
    StateDict,
    convert_state_dict,
    export_checkpoint,
    from_pretrained_or_convert,
)

from .configuration import GPT2Config
from .modeling import GPT2LMHeadModel, GPT2Model, GPT2PreTrainedModel

_QKV = ("q_proj", "k_proj", "v_proj")

# Their names and layouts -> ours, applied by transformers' loader while it reads their files
# (and in reverse by the export). Every pattern matches with or without "transformer.".
WEIGHT_CONVERSIONS = (
    WeightConverter(
        "attn.c_attn.weight",
        [f"attn.{name}.weight" for name in _QKV],
        operations=[Transpose(0, 1), Chunk(dim=0)],
    ),
    WeightConverter(
        "attn.c_attn.bias", [f"attn.{name}.bias" for name in _QKV], operations=[Chunk(dim=0)]
    ),
    WeightConverter("attn.c_proj.weight", "attn.o_proj.weight", operations=[Transpose(0, 1)]),
    WeightRenaming("attn.c_proj.bias", "attn.o_proj.bias"),
    WeightConverter("mlp.c_fc.weight", "mlp.c_fc.weight", operations=[Transpose(0, 1)]),
    WeightConverter("mlp.c_proj.weight", "mlp.c_proj.weight", operations=[Transpose(0, 1)]),
)

# What our GPT-2 mirrors, for from_pretrained and export_to_transformers.
CONVERTER = CheckpointConverter(
    transformers_model_type="gpt2",
    transformers_classes={
        GPT2LMHeadModel: transformers.GPT2LMHeadModel,
        GPT2Model: transformers.GPT2Model,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    ignore_unexpected=(r"\.attn\.(masked_)?bias$",),
)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our GPT-2 classes: transformers' checkpoints are converted."""
    return from_pretrained_or_convert(
        cls, GPT2PreTrainedModel, pretrained_model_name_or_path, CONVERTER, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that transformers' ``GPT2LMHeadModel`` (or ``GPT2Model``,
    for a model without a head) loads with ``from_pretrained``, giving the same outputs."""
    return export_checkpoint(model, out_dir, CONVERTER)


def config_from_transformers(config: Mapping[str, Any]) -> GPT2Config:
    """Our config from a transformers GPT-2 config dict."""
    return GPT2Config.from_dict(CONVERTER.config_from_transformers(config))


def state_from_transformers(theirs: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers GPT-2 state dict in our names and layouts (in memory)."""
    return convert_state_dict(theirs, WEIGHT_CONVERSIONS)


def state_to_transformers(ours: Mapping[str, torch.Tensor]) -> StateDict:
    """Our GPT-2 state dict in transformers' names and Conv1D layouts (in memory)."""
    return convert_state_dict(ours, WEIGHT_CONVERSIONS, reverse=True)
