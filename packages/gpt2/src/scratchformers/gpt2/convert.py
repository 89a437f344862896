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

import transformers
from transformers.core_model_loading import Chunk, Transpose, WeightConverter, WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import GPT2Config

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

# What our GPT-2 mirrors (GPT2PreTrainedModel.checkpoint_converters).
CONVERTER = CheckpointConverter(
    transformers_model_type="gpt2",
    config_class=GPT2Config,
    transformers_classes={
        "GPT2LMHeadModel": transformers.GPT2LMHeadModel,
        "GPT2Model": transformers.GPT2Model,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    ignore_unexpected=(r"\.attn\.(masked_)?bias$",),
)
