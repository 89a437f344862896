"""transformers' BERT checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The config is the same, field for field, and so are the numbers: only names differ.

* Attention: their ``attention.self.{query,key,value}`` and ``attention.output.dense`` are the
  core's ``attention.{q,k,v}_proj`` and ``attention.o_proj``; the LayerNorm after attention,
  ``attention.output.LayerNorm``, is the layer's ``attention_norm``.
* Feed-forward: ``intermediate.dense`` and ``output.dense`` are ``mlp.up_proj`` and
  ``mlp.down_proj``; ``output.LayerNorm`` is ``mlp_norm``.
* The masked-LM head is one module: ``cls.predictions.transform.{dense,LayerNorm}``,
  ``cls.predictions.decoder`` and ``cls.predictions.bias`` are ``cls.{dense,LayerNorm}``,
  ``cls.decoder`` and ``cls.bias``, with transformers' ties (decoder weight = word embedding,
  decoder bias = ``cls.bias``), so tied files (which store neither) and untied ones (which
  store both) map one to one.

Embeddings, the pooler and the classifier keep their names. Renames are regular expressions
matched anywhere in a key and applied in order, so each ``attention.output.*`` rename comes
before the ``output.*`` one that would also match it. A ``BertModel`` file has no ``bert.``
prefix; transformers' loader adds or strips it.
"""

from __future__ import annotations

import transformers
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import BertConfig

# Their names -> ours, applied by transformers' loader while it reads their files (and in
# reverse by the export). Order matters: see the module docstring.
WEIGHT_CONVERSIONS = (
    WeightRenaming("attention.self.query", "attention.q_proj"),
    WeightRenaming("attention.self.key", "attention.k_proj"),
    WeightRenaming("attention.self.value", "attention.v_proj"),
    WeightRenaming("attention.output.dense", "attention.o_proj"),
    WeightRenaming("attention.output.LayerNorm", "attention_norm"),
    WeightRenaming("intermediate.dense", "mlp.up_proj"),
    WeightRenaming("output.dense", "mlp.down_proj"),
    WeightRenaming("output.LayerNorm", "mlp_norm"),
    WeightRenaming("cls.predictions.transform.dense", "cls.dense"),
    WeightRenaming("cls.predictions.transform.LayerNorm", "cls.LayerNorm"),
    WeightRenaming("cls.predictions.decoder", "cls.decoder"),
    WeightRenaming("cls.predictions.bias", "cls.bias"),
)

# Keys of older BERT files that are not weights: the position-id buffer.
IGNORE_UNEXPECTED = (r"embeddings\.position_ids$",)

# What fine-tuning adds on a pretrained body: the classifier, and the pooler that transformers'
# BertForMaskedLM does not have. They start fresh on a converted load; nothing else may.
FRESH_HEADS = (r"(^|\.)classifier\.", r"(^|\.)pooler\.dense\.")


class BertCheckpointConverter(CheckpointConverter):
    """The converter, refusing to export a ``BertModel`` built with
    ``add_pooling_layer=False``: transformers' ``BertModel.from_pretrained`` always builds a
    pooler, which would be left unfilled."""

    def check_export(self, model: PreTrainedModel) -> None:
        super().check_export(model)
        if getattr(model, "pooler", True) is None:
            raise ValueError(
                "a BertModel is exported with its pooler (add_pooling_layer=True): "
                "transformers' BertModel.from_pretrained would leave pooler.dense at random"
            )


# What our BERT mirrors (BertPreTrainedModel.checkpoint_converters).
CONVERTER = BertCheckpointConverter(
    transformers_model_type="bert",
    config_class=BertConfig,
    transformers_classes={
        "BertForMaskedLM": transformers.BertForMaskedLM,
        "BertForSequenceClassification": transformers.BertForSequenceClassification,
        "BertModel": transformers.BertModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    ignore_unexpected=IGNORE_UNEXPECTED,
    fresh_heads=FRESH_HEADS,
)
