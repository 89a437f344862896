"""scratchformers.bert_mlm: BERT from scratch that loads transformers' BERT checkpoints (masked
LM, sequence classification, the bare encoder) and matches them.

Importing this package registers the classes with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from scratchformers.core_attention.interop import export_to_transformers

from .configuration import BertConfig
from .modeling import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertPreTrainedModel,
)

AutoConfig.register(BertConfig.model_type, BertConfig, exist_ok=True)
AutoModel.register(BertConfig, BertModel, exist_ok=True)
AutoModelForMaskedLM.register(BertConfig, BertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    BertConfig, BertForSequenceClassification, exist_ok=True
)

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "BertPreTrainedModel",
    "export_to_transformers",
]
