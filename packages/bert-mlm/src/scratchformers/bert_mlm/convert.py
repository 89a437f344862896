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

from .configuration import BertConfig
from .modeling import BertForMaskedLM, BertForSequenceClassification, BertModel, BertPreTrainedModel

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

# What our BERT mirrors, for from_pretrained and export_to_transformers.
CONVERTER = CheckpointConverter(
    transformers_model_type="bert",
    transformers_classes={
        BertForMaskedLM: transformers.BertForMaskedLM,
        BertForSequenceClassification: transformers.BertForSequenceClassification,
        BertModel: transformers.BertModel,
    },
    weight_conversions=WEIGHT_CONVERSIONS,
    ignore_unexpected=IGNORE_UNEXPECTED,
    fresh_heads=FRESH_HEADS,
)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our BERT classes: transformers' checkpoints are converted."""
    return from_pretrained_or_convert(
        cls, BertPreTrainedModel, pretrained_model_name_or_path, CONVERTER, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory that the transformers class it mirrors
    (``BertForMaskedLM``, ``BertForSequenceClassification`` or ``BertModel``) loads with
    ``from_pretrained``, with no missing or unexpected keys and the same outputs.

    A ``BertModel`` built with ``add_pooling_layer=False`` is refused: transformers'
    ``BertModel.from_pretrained`` always builds a pooler, which would be left unfilled.
    """
    if isinstance(model, BertModel) and model.pooler is None:
        raise ValueError(
            "export_to_transformers needs a BertModel with its pooler (add_pooling_layer=True): "
            "transformers' BertModel.from_pretrained would leave pooler.dense at random"
        )
    return export_checkpoint(model, out_dir, CONVERTER)


def config_from_transformers(config: Mapping[str, Any]) -> BertConfig:
    """Our config from a transformers BERT config dict."""
    return BertConfig.from_dict(CONVERTER.config_from_transformers(config))


def state_from_transformers(theirs: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers BERT state dict in our names (in memory)."""
    return convert_state_dict(theirs, WEIGHT_CONVERSIONS)


def state_to_transformers(ours: Mapping[str, torch.Tensor]) -> StateDict:
    """Our BERT state dict in transformers' names (in memory)."""
    return convert_state_dict(ours, WEIGHT_CONVERSIONS, reverse=True)
