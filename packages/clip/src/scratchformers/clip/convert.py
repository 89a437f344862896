"""transformers' CLIP checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The config is transformers' own, field for field, and the numbers are the same: only names
differ. Our towers are built of the vit package's layers, so inside a layer the names are
ViT's; around them they are CLIP's. Their names -> ours:

* ``encoder.layers.<i>`` is ``layers.<i>``;
* ``self_attn.out_proj`` is the core's ``attention.o_proj``, and ``self_attn.{q,k,v}_proj``
  are ``attention.{q,k,v}_proj``;
* ``layer_norm1`` and ``layer_norm2`` are ``layernorm_before`` and ``layernorm_after``;
* the patch projection ``embeddings.patch_embedding`` is the vit package's
  ``embeddings.patch_embeddings.projection``;
* ``pre_layrnorm`` (sic) is ``pre_layernorm``.

Everything else (``embeddings.class_embedding``, both ``position_embedding`` tables,
``token_embedding``, ``final_layer_norm``, ``post_layernorm``, the projections and
``logit_scale``) keeps its name and shape. Renames are regular expressions matched anywhere in
a key; each names its whole module, so that they apply the same in either direction.
"""

from __future__ import annotations

import transformers
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import CLIPConfig

WEIGHT_CONVERSIONS = (
    WeightRenaming(r"encoder\.layers\.", "layers."),
    WeightRenaming(r"self_attn\.q_proj", "attention.q_proj"),
    WeightRenaming(r"self_attn\.k_proj", "attention.k_proj"),
    WeightRenaming(r"self_attn\.v_proj", "attention.v_proj"),
    WeightRenaming(r"self_attn\.out_proj", "attention.o_proj"),
    WeightRenaming(r"layer_norm1", "layernorm_before"),
    WeightRenaming(r"layer_norm2", "layernorm_after"),
    WeightRenaming(r"embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    WeightRenaming(r"pre_layrnorm", "pre_layernorm"),
)

# What our CLIP mirrors (CLIPPreTrainedModel.checkpoint_converters).
CONVERTER = CheckpointConverter(
    transformers_model_type="clip",
    config_class=CLIPConfig,
    transformers_classes={"CLIPModel": transformers.CLIPModel},
    weight_conversions=WEIGHT_CONVERSIONS,
)
