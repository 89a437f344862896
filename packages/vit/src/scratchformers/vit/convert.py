"""transformers' ViT checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The config is the same, field for field, and so are the numbers: only names differ, and only
in files. Our modules carry the names transformers' ViT gives its own in memory (``layers.<i>.
attention.q_proj``, ``mlp.fc1``, ...); the files its ``save_pretrained`` writes, and those on
the hub, keep the older names, which its loader renames on the way in. We state the same
renames (older names -> ours):

* ``encoder.layer.<i>`` is ``layers.<i>``;
* ``attention.attention.{query,key,value}`` are the core's ``attention.{q,k,v}_proj``, and
  ``attention.output.dense`` is ``attention.o_proj``;
* ``intermediate.dense`` and ``output.dense`` are ``mlp.fc1`` and ``mlp.fc2``.

The embeddings, the norms, the pooler and the classifier keep their names. Renames are
regular expressions matched anywhere in a key and applied in order, so the
``attention.output.dense`` rename comes before the ``output.dense`` one that would also match
it. A file already in the new names passes unchanged. A ``ViTModel`` file has no ``vit.``
prefix; transformers' loader adds or strips it.

The encoder of a masked autoencoder's checkpoint (transformers' ``vit_mae``, or
scratchformers-vitmae's) is a ViT in the same names, without a pooler and with a decoder
beside it: our ViT classes read it too (``MAE_ENCODER_CONVERTERS``), which is how fine-tuning
starts after MAE pretraining.

transformers' own ``ViTModel`` renames are looked up by class name, so a converted load of our
(identically named) ``ViTModel`` gets those rather than these; both say the same, and apply
to our names as the identity, which is why ours must keep its in-memory names.
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

from .configuration import ViTConfig
from .modeling import ViTForImageClassification, ViTModel, ViTPreTrainedModel

# Their file names -> ours, applied by transformers' loader while it reads their files (and
# in reverse by the export). Order matters: see the module docstring.
WEIGHT_CONVERSIONS = (
    WeightRenaming(r"encoder\.layer\.", "layers."),
    WeightRenaming(r"attention\.attention\.query", "attention.q_proj"),
    WeightRenaming(r"attention\.attention\.key", "attention.k_proj"),
    WeightRenaming(r"attention\.attention\.value", "attention.v_proj"),
    WeightRenaming(r"attention\.output\.dense", "attention.o_proj"),
    WeightRenaming(r"intermediate\.dense", "mlp.fc1"),
    WeightRenaming(r"output\.dense", "mlp.fc2"),
)

# Our config fields that transformers' ViTConfig lacks, with the value its ViT builds: a
# model with any other value computes what no transformers class computes.
OWN_FIELDS = {
    "use_class_token": True,
    "pooling": "cls",
    "final_norm_position": "before_pooling",
    "patch_bias": True,
}


class ViTCheckpointConverter(CheckpointConverter):
    """The converter, with our own config fields left out of transformers' config."""

    def config_to_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        fields = super().config_to_transformers(config)
        for name in OWN_FIELDS:
            fields.pop(name, None)
        return fields


# What fine-tuning adds on a pretrained body: the classifier, and the pooler that transformers'
# ViTForImageClassification does not have. They start fresh on a converted load; nothing else
# may.
FRESH_HEADS = (r"(^|\.)classifier\.", r"(^|\.)pooler\.dense\.")

# What our ViT mirrors, for from_pretrained and export_to_transformers.
CONVERTER = ViTCheckpointConverter(
    transformers_model_type="vit",
    transformers_classes={
        ViTForImageClassification: transformers.ViTForImageClassification,
        ViTModel: transformers.ViTModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    fresh_heads=FRESH_HEADS,
)

# A masked autoencoder's config fields that describe its decoder and its masking, which a ViT
# built from its encoder leaves out.
MAE_ONLY_FIELDS = (
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
    "mask_ratio",
    "norm_pix_loss",
)


class MAEEncoderConverter(CheckpointConverter):
    """The encoder of a masked autoencoder's checkpoint, read as a ViT: its config without
    the MAE's own fields."""

    def config_from_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        fields = super().config_from_transformers(config)
        for name in MAE_ONLY_FIELDS:
            fields.pop(name, None)
        return fields


# Fine-tuning after masked-autoencoder pretraining: the checkpoints of transformers' ViTMAE
# (model type "vit_mae") and of scratchformers-vitmae ("scratchformers-vitmae") hold a ViT
# encoder in ViT's names, with its (fixed sin-cos) position table, no pooler and a decoder.
# Our ViT classes load the encoder, start the classifier and the pooler fresh (named in a
# warning), and leave the decoder out (ViTPreTrainedModel ignores its weights); the positions
# become learned ones from there on.
MAE_ENCODER_CONVERTERS = tuple(
    MAEEncoderConverter(
        transformers_model_type=model_type,
        transformers_classes={},  # nothing is exported to them
        weight_conversions=WEIGHT_CONVERSIONS,
        fresh_heads=FRESH_HEADS,
    )
    for model_type in ("vit_mae", "scratchformers-vitmae")
)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our ViT classes: transformers' ViT checkpoints are converted,
    and the encoder of a masked autoencoder's (transformers' ViTMAE or ours) is read."""
    converters = (CONVERTER, *MAE_ENCODER_CONVERTERS)
    return from_pretrained_or_convert(
        cls, ViTPreTrainedModel, pretrained_model_name_or_path, converters, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that the transformers class it mirrors
    (``ViTForImageClassification`` or ``ViTModel``) loads with ``from_pretrained``, with no
    missing or unexpected keys and the same outputs.

    Refused, naming the reason: a model whose config transformers' ViT cannot express (mean
    pooling, no class token, the final norm after pooling, a patch projection without bias:
    timm's variants), and a ``ViTModel`` built with ``add_pooling_layer=False``, since
    transformers' ``ViTModel.from_pretrained`` always builds a pooler and would leave it at
    random.
    """
    for name, supported in OWN_FIELDS.items():
        value = getattr(model.config, name)
        if value != supported:
            raise ValueError(
                f"export_to_transformers cannot write {name}={value!r}: transformers' ViT "
                f"only computes {name}={supported!r}"
            )
    if isinstance(model, ViTModel) and model.pooler is None:
        raise ValueError(
            "export_to_transformers needs a ViTModel with its pooler (add_pooling_layer=True): "
            "transformers' ViTModel.from_pretrained would leave pooler.dense at random"
        )
    return export_checkpoint(model, out_dir, CONVERTER)


def config_from_transformers(config: Mapping[str, Any]) -> ViTConfig:
    """Our config from a transformers ViT config dict."""
    return ViTConfig.from_dict(CONVERTER.config_from_transformers(config))


def state_from_transformers(theirs: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers ViT state dict, in its file names or its in-memory ones, in our names."""
    return convert_state_dict(theirs, WEIGHT_CONVERSIONS)


def state_to_transformers(ours: Mapping[str, torch.Tensor]) -> StateDict:
    """Our ViT state dict in the names transformers' ViT files use."""
    return convert_state_dict(ours, WEIGHT_CONVERSIONS, reverse=True)
