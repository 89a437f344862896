"""transformers' ViTMAE checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The config is transformers' own, field for field, and the numbers are the same: only names
differ, and only in files. Our modules carry the names transformers' ViTMAE gives its own in
memory; the files its ``save_pretrained`` writes, and those on the hub, keep the older ViT
names, which its loader renames on the way in. Those renames are the vit package's (``encoder.
layer.<i>`` is ``layers.<i>``, ``attention.attention.query`` is ``attention.q_proj``, ...,
``output.dense`` is ``mlp.fc2``), and they are used from there, not copied. They apply to the
decoder's layers too: the hub's files name them ``decoder.decoder_layers.<i>.attention.
attention.query``, and transformers' ``save_pretrained`` (whose ``encoder.layer`` rename also
matches inside ``decoder_layers``) writes ``decoder.decoder_encoder.layer.<i>...``; both load.

transformers looks its own renames up by class name first, and it maps ``ViTMAEModel`` onto
its ``ViTModel`` renames and has its own for ``ViTMAEForPreTraining``: a converted load of our
identically named classes gets those as well as these. All say the same, and apply to our
names as the identity, which is why ours must keep transformers' in-memory names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from scratchformers.core_attention.interop import (
    CheckpointConverter,
    StateDict,
    convert_state_dict,
    export_checkpoint,
    from_pretrained_or_convert,
)
from scratchformers.vit.configuration import as_pair
from scratchformers.vit.convert import WEIGHT_CONVERSIONS

from .configuration import ViTMAEConfig
from .modeling import ViTMAEForPreTraining, ViTMAEModel, ViTMAEPreTrainedModel

# What pretraining adds on an encoder: the decoder. A ViTMAEForPreTraining loaded from a bare
# encoder's checkpoint (transformers' ViTMAEModel) starts it fresh; nothing else may.
FRESH_HEADS = (r"^decoder\.",)

# What our ViTMAE mirrors, for from_pretrained and export_to_transformers.
CONVERTER = CheckpointConverter(
    transformers_model_type="vit_mae",
    transformers_classes={
        ViTMAEForPreTraining: transformers.ViTMAEForPreTraining,
        ViTMAEModel: transformers.ViTMAEModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    fresh_heads=FRESH_HEADS,
)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our ViTMAE classes: transformers' checkpoints are converted."""
    return from_pretrained_or_convert(
        cls, ViTMAEPreTrainedModel, pretrained_model_name_or_path, CONVERTER, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that the transformers class it mirrors
    (``ViTMAEForPreTraining`` or ``ViTMAEModel``) loads with ``from_pretrained``, with no
    missing or unexpected keys and the same outputs for the same ``noise``.

    Refused, naming the reason: a non-square ``image_size``, for which transformers' ViTMAE
    cannot build its position tables.
    """
    height, width = as_pair(model.config.image_size)
    if height != width:
        raise ValueError(
            f"export_to_transformers cannot write image_size={model.config.image_size}: "
            "transformers' ViTMAE builds its position tables for square images only"
        )
    return export_checkpoint(model, out_dir, CONVERTER)


def config_from_transformers(config: Mapping[str, Any]) -> ViTMAEConfig:
    """Our config from a transformers ViTMAE config dict."""
    return ViTMAEConfig.from_dict(CONVERTER.config_from_transformers(config))


def state_from_transformers(theirs: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers ViTMAE state dict, in its file names or its in-memory ones, in ours."""
    return convert_state_dict(theirs, WEIGHT_CONVERSIONS)


def state_to_transformers(ours: Mapping[str, torch.Tensor]) -> StateDict:
    """Our ViTMAE state dict in the names transformers' ViTMAE files use."""
    return convert_state_dict(ours, WEIGHT_CONVERSIONS, reverse=True)
