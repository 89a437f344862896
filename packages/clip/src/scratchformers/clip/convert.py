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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import (
    CheckpointConverter,
    StateDict,
    convert_state_dict,
    export_checkpoint,
    from_pretrained_or_convert,
)

from .configuration import CLIPConfig
from .modeling import CLIPModel, CLIPPreTrainedModel

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

# Entries of a tower's config dict that name the class rather than describe the tower: each
# side's CLIPConfig builds its towers with its own classes.
_TOWER_BOOKKEEPING = ("model_type", "architectures", "transformers_version", "_name_or_path")


def _towers_without_bookkeeping(config: Mapping[str, Any]) -> dict[str, Any]:
    fields = dict(config)
    for tower in ("text_config", "vision_config"):
        if isinstance(fields.get(tower), Mapping):
            fields[tower] = {k: v for k, v in fields[tower].items() if k not in _TOWER_BOOKKEEPING}
    return fields


class CLIPCheckpointConverter(CheckpointConverter):
    """The converter, with the towers' model types left to each side's CLIPConfig."""

    def config_from_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return _towers_without_bookkeeping(super().config_from_transformers(config))

    def config_to_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return _towers_without_bookkeeping(super().config_to_transformers(config))


CONVERTER = CLIPCheckpointConverter(
    transformers_model_type="clip",
    transformers_classes={CLIPModel: transformers.CLIPModel},
    weight_conversions=WEIGHT_CONVERSIONS,
)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our CLIP classes: transformers' checkpoints are converted."""
    return from_pretrained_or_convert(
        cls, CLIPPreTrainedModel, pretrained_model_name_or_path, CONVERTER, *args, **kwargs
    )


def export_to_transformers(model: CLIPModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that transformers' ``CLIPModel`` loads with
    ``from_pretrained``, with no missing or unexpected keys and the same outputs."""
    if not isinstance(model, CLIPModel):
        raise TypeError(
            f"export_to_transformers takes a scratchformers CLIPModel, got {type(model).__name__}"
        )
    return export_checkpoint(model, out_dir, CONVERTER)


def config_from_transformers(config: Mapping[str, Any]) -> CLIPConfig:
    """Our config from a transformers CLIP config dict."""
    return CLIPConfig.from_dict(CONVERTER.config_from_transformers(config))


def state_from_transformers(theirs: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers CLIP state dict in our names."""
    return convert_state_dict(theirs, WEIGHT_CONVERSIONS)


def state_to_transformers(ours: Mapping[str, torch.Tensor]) -> StateDict:
    """Our CLIP state dict in transformers' names."""
    return convert_state_dict(ours, WEIGHT_CONVERSIONS, reverse=True)
