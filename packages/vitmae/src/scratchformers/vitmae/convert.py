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

import transformers
from transformers import PreTrainedModel

from scratchformers.core_attention.interop import CheckpointConverter
from scratchformers.vit.configuration import as_pair
from scratchformers.vit.convert import WEIGHT_CONVERSIONS

from .configuration import ViTMAEConfig

# What pretraining adds on an encoder: the decoder. A ViTMAEForPreTraining loaded from a bare
# encoder's checkpoint (transformers' ViTMAEModel) starts it fresh; nothing else may.
FRESH_HEADS = (r"^decoder\.",)


class ViTMAECheckpointConverter(CheckpointConverter):
    """The converter, refusing to export a non-square ``image_size``, for which transformers'
    ViTMAE cannot build its position tables."""

    def check_export(self, model: PreTrainedModel) -> None:
        super().check_export(model)
        height, width = as_pair(model.config.image_size)
        if height != width:
            raise ValueError(
                f"image_size={model.config.image_size} is not square: transformers' ViTMAE "
                "builds its position tables for square images only"
            )


# What our ViTMAE mirrors (ViTMAEPreTrainedModel.checkpoint_converters).
CONVERTER = ViTMAECheckpointConverter(
    transformers_model_type="vit_mae",
    config_class=ViTMAEConfig,
    transformers_classes={
        "ViTMAEForPreTraining": transformers.ViTMAEForPreTraining,
        "ViTMAEModel": transformers.ViTMAEModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    fresh_heads=FRESH_HEADS,
)
