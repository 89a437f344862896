"""BertConfig: transformers' BERT configuration, field for field, under our model type."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BertConfig as TransformersBertConfig

from scratchformers.core_attention import check_config

# transformers' BERT options this encoder does not build: refused rather than ignored, so a
# checkpoint that relies on one never loads into a model that computes something else.
UNSUPPORTED = {
    "is_decoder": "BERT as a causal decoder (use scratchformers-basicformer)",
    "add_cross_attention": "BERT with cross attention (use scratchformers-encdec)",
}
# Probabilities whose names end in "prob", which check_config does not recognise.
PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@strict
class BertConfig(TransformersBertConfig):
    """The configuration of :class:`~scratchformers.bert_mlm.BertModel` and its heads.

    It *is* transformers' ``BertConfig`` (``vocab_size``, ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``hidden_act``,
    ``hidden_dropout_prob``, ``attention_probs_dropout_prob``, ``max_position_embeddings``,
    ``type_vocab_size``, ``layer_norm_eps``, ``classifier_dropout``, ``num_labels``,
    ``problem_type``, ...), so a transformers BERT ``config.json`` reads as is; only
    ``model_type`` differs, which routes the Auto classes to our models.
    """

    model_type = "scratchformers-bert-mlm"

    def __post_init__(self, **kwargs: object) -> None:
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field for a config this BERT cannot honour."""
        check_config(self)
        if self.type_vocab_size < 1:
            raise ValueError(f"type_vocab_size must be at least 1, got {self.type_vocab_size}")
        for name in PROBABILITY_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        # transformers 5 dropped the field, but older BERT config.json files (and some
        # descendants) still carry it; only the absolute table is built here.
        position_embedding_type = getattr(self, "position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={position_embedding_type!r} is not supported: only "
                "'absolute' (learned) position embeddings are built"
            )
        for field, what in UNSUPPORTED.items():
            if getattr(self, field, False):
                raise ValueError(f"{field}=True is not supported: {what}")
