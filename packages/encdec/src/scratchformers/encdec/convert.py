"""transformers' BART and Marian checkpoints <-> ours: what differs, stated for the shared loader
(``scratchformers.core_attention.interop``).

The layers keep BART's names (``self_attn``, ``encoder_attn``, ``fc1``, ``fc2``, the three
LayerNorms), which Marian shares, so the weights differ only in:

* the attention output projection: ``out_proj`` there, the core's ``o_proj`` here;
* the token table: ``shared`` there, tied to ``encoder.embed_tokens`` and
  ``decoder.embed_tokens``; here the encoder owns it (``encoder.embed_tokens``) and the decoder
  borrows it, so it is stored once. Files that store the tied copies too (older saves) have a
  ``decoder.embed_tokens.weight`` that is not a weight of ours;
* Marian's sinusoidal tables (``embed_positions.weight``), which older saves hold and ours
  compute: not weights either.

The configs differ in what BART and Marian fix by their class: which positions, whether the
embeddings are normalised, where the norms sit. Reading their config.json sets our options to
their architecture; exporting checks that the model has one of the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import transformers
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import CheckpointConverter

from .configuration import EncDecConfig

# Their names -> ours, matched anywhere in a key (with or without the "model." prefix). Plain
# names, not regular expressions: the export writes each source name back as it stands.
WEIGHT_CONVERSIONS = (
    WeightRenaming("_attn.out_proj.", "_attn.o_proj."),
    WeightRenaming("shared.weight", "encoder.embed_tokens.weight"),
)

# Keys of their files that are not weights of ours (see the module docstring).
IGNORE_UNEXPECTED = (r"decoder\.embed_tokens\.weight$", r"embed_positions\.weight$", r"\.version$")

# Our options that are not fields of theirs, and the values their class fixes.
BART_ARCHITECTURE = {
    "position_embedding_type": "learned",
    "position_offset": 2,
    "layernorm_embedding": True,
    "norm_position": "post",
}
MARIAN_ARCHITECTURE = {
    "position_embedding_type": "sinusoidal",
    "layernorm_embedding": False,
    "norm_position": "post",
}
OUR_OPTIONS = ("position_embedding_type", "position_offset", "layernorm_embedding", "norm_position")


class FamilyConverter(CheckpointConverter):
    """A :class:`CheckpointConverter` for one family (BART or Marian), whose class fixes the
    options that our config leaves open (its ``fixed_fields``, one of the architectures
    above): our options are set to them on load, left out of their config and checked by
    the export, which writes a model to the family it has the architecture of."""

    def fields_from_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Their config.json -> ours, refusing what EncDec cannot hold (separate
        embeddings or vocabularies)."""
        self._check_supported(config)
        return super().fields_from_transformers(config)

    def fields_to_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Our config -> theirs, without our options (their class fixes them, or, like
        Marian's ``position_offset``, has no use for them)."""
        theirs = super().fields_to_transformers(config)
        return {k: v for k, v in theirs.items() if k not in OUR_OPTIONS}

    def check_export(self, model: PreTrainedModel) -> None:
        if not model.config.tie_word_embeddings:
            raise ValueError(
                "this model has tie_word_embeddings=False: BART and Marian tie their output "
                "layer to the token embedding"
            )
        super().check_export(model)

    def _check_supported(self, config: Mapping[str, Any]) -> None:
        if not config.get("tie_word_embeddings", True):
            # transformers then unties the encoder's, the decoder's and the shared table too.
            raise ValueError(
                "this checkpoint has tie_word_embeddings=False (separate encoder, decoder and "
                "output embeddings); EncDec shares one token embedding and ties the output to it"
            )
        if self.transformers_model_type != "marian":
            return
        if not config.get("share_encoder_decoder_embeddings", True):
            raise ValueError(
                "this Marian checkpoint has share_encoder_decoder_embeddings=False (separate "
                "source and target vocabularies); EncDec shares one token embedding"
            )
        decoder_vocab = config.get("decoder_vocab_size")
        if decoder_vocab is not None and decoder_vocab != config.get("vocab_size"):
            raise ValueError(
                f"this Marian checkpoint has decoder_vocab_size={decoder_vocab} != vocab_size="
                f"{config.get('vocab_size')}; EncDec shares one vocabulary"
            )


def _converter(model_type: str, classes: Mapping, architecture: Mapping) -> FamilyConverter:
    return FamilyConverter(
        transformers_model_type=model_type,
        config_class=EncDecConfig,
        transformers_classes=classes,
        weight_conversions=WEIGHT_CONVERSIONS,
        fixed_fields=architecture,
        # Fields of theirs that their class ignores or that only affect training (layerdrop,
        # an old BART config's normalize_before, ...) are dropped.
        only_our_fields=True,
        ignore_unexpected=IGNORE_UNEXPECTED,
        # A bare BartModel / MarianModel directory has no output bias: it starts at zero.
        fresh_heads=(r"^final_logits_bias$",),
    )


# BART, then Marian: EncDecPreTrainedModel.checkpoint_converters, and the order in which
# export_to_transformers tries them.
BART = _converter(
    "bart",
    {
        "EncDecForConditionalGeneration": transformers.BartForConditionalGeneration,
        "EncDecModel": transformers.BartModel,
    },
    BART_ARCHITECTURE,
)
MARIAN = _converter(
    "marian",
    {
        "EncDecForConditionalGeneration": transformers.MarianMTModel,
        "EncDecModel": transformers.MarianModel,
    },
    MARIAN_ARCHITECTURE,
)
CONVERTERS = (BART, MARIAN)
