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

import transformers
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import ViTConfig

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
# model with any other value (timm's variants) computes what no transformers class computes.
FIXED_FIELDS = {
    "use_class_token": True,
    "pooling": "cls",
    "final_norm_position": "before_pooling",
    "patch_bias": True,
}

# What fine-tuning adds on a pretrained body: the classifier, and the pooler that transformers'
# ViTForImageClassification does not have. They start fresh on a converted load; nothing else
# may.
FRESH_HEADS = (r"(^|\.)classifier\.", r"(^|\.)pooler\.dense\.")


class ViTCheckpointConverter(CheckpointConverter):
    """The converter, refusing to export a ``ViTModel`` built with ``add_pooling_layer=False``:
    transformers' ``ViTModel.from_pretrained`` always builds a pooler, which would be left at
    random."""

    def check_export(self, model: PreTrainedModel) -> None:
        super().check_export(model)
        if getattr(model, "pooler", True) is None:
            raise ValueError(
                "a ViTModel is exported with its pooler (add_pooling_layer=True): "
                "transformers' ViTModel.from_pretrained would leave pooler.dense at random"
            )


# What our ViT mirrors (ViTPreTrainedModel.checkpoint_converters).
CONVERTER = ViTCheckpointConverter(
    transformers_model_type="vit",
    config_class=ViTConfig,
    transformers_classes={
        "ViTForImageClassification": transformers.ViTForImageClassification,
        "ViTModel": transformers.ViTModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    fixed_fields=FIXED_FIELDS,
    fresh_heads=FRESH_HEADS,
)

# Fine-tuning after masked-autoencoder pretraining: the checkpoints of transformers' ViTMAE
# (model type "vit_mae") and of scratchformers-vitmae ("scratchformers-vitmae") hold a ViT
# encoder in ViT's names, with its (fixed sin-cos) position table, no pooler and a decoder.
# Our ViT classes load the encoder, start the classifier and the pooler fresh (named in a
# warning), and leave the decoder out (ViTPreTrainedModel ignores its weights, and the config
# its fields); the positions become learned ones from there on. Nothing is exported to them.
MAE_ENCODER_CONVERTERS = tuple(
    CheckpointConverter(
        transformers_model_type=model_type,
        config_class=ViTConfig,
        transformers_classes={},
        weight_conversions=WEIGHT_CONVERSIONS,
        only_our_fields=True,
        fresh_heads=FRESH_HEADS,
    )
    for model_type in ("vit_mae", "scratchformers-vitmae")
)
