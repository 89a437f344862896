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

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import transformers
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.core_model_loading import WeightRenaming

from scratchformers.core_attention.interop import (
    CheckpointConverter,
    export_checkpoint,
    from_pretrained_or_convert,
)

from .configuration import EncDecConfig
from .modeling import EncDecForConditionalGeneration, EncDecModel, EncDecPreTrainedModel

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


def _our_fields() -> set[str]:
    return {f.name for f in fields(EncDecConfig)} | set(PreTrainedConfig().to_dict())


@dataclass(frozen=True)
class FamilyConverter(CheckpointConverter):
    """A :class:`CheckpointConverter` for one family (BART or Marian), whose class fixes the
    options that our config leaves open (``architecture``)."""

    architecture: Mapping[str, Any] = None  # type: ignore[assignment]

    def matches(self, config: EncDecConfig) -> bool:
        """Whether a model with ``config`` has this family's architecture (so exports to it)."""
        return all(getattr(config, name) == value for name, value in self.architecture.items())

    def config_from_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Their config.json -> ours: the shared fields as they are, our options set to their
        architecture; fields of theirs that their class ignores or that only affect training
        (layerdrop, an old BART config's ``normalize_before``, ...) are dropped."""
        ours = _our_fields()
        theirs = super().config_from_transformers(config)
        self._check_supported(theirs)
        return {k: v for k, v in theirs.items() if k in ours} | dict(self.architecture)

    def config_to_transformers(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Our config -> theirs, without our options (their class fixes them)."""
        theirs = super().config_to_transformers(config)
        return {k: v for k, v in theirs.items() if k not in OUR_OPTIONS}

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
        transformers_classes=classes,
        weight_conversions=WEIGHT_CONVERSIONS,
        ignore_unexpected=IGNORE_UNEXPECTED,
        # A bare BartModel / MarianModel directory has no output bias: it starts at zero.
        fresh_heads=(r"^final_logits_bias$",),
        architecture=architecture,
    )


BART = _converter(
    "bart",
    {
        EncDecForConditionalGeneration: transformers.BartForConditionalGeneration,
        EncDecModel: transformers.BartModel,
    },
    BART_ARCHITECTURE,
)
MARIAN = _converter(
    "marian",
    {
        EncDecForConditionalGeneration: transformers.MarianMTModel,
        EncDecModel: transformers.MarianModel,
    },
    MARIAN_ARCHITECTURE,
)
CONVERTERS = (BART, MARIAN)


def load_pretrained(
    cls: type[PreTrainedModel],
    pretrained_model_name_or_path: str | os.PathLike[str] | None,
    *args: Any,
    **kwargs: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` for our classes: BART and Marian checkpoints are converted."""
    return from_pretrained_or_convert(
        cls, EncDecPreTrainedModel, pretrained_model_name_or_path, CONVERTERS, *args, **kwargs
    )


def export_to_transformers(model: PreTrainedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a directory of the transformers family it has the architecture of:
    ``BartForConditionalGeneration`` (a model trained here with the default options, or
    loaded from BART) or ``MarianMTModel`` (sinusoidal positions, loaded from opus-mt);
    ``BartModel`` / ``MarianModel`` for the bare model. transformers loads it with
    ``from_pretrained`` and gives the same outputs."""
    config = model.config
    if not config.tie_word_embeddings:
        raise ValueError(
            "export_to_transformers needs tie_word_embeddings=True: BART and Marian tie their "
            "output layer to the token embedding"
        )
    for converter in CONVERTERS:
        if converter.matches(config):
            return export_checkpoint(model, out_dir, converter)
    raise ValueError(
        "this model's options match neither BART "
        f"({BART_ARCHITECTURE}) nor Marian ({MARIAN_ARCHITECTURE}): got "
        f"{ {name: getattr(config, name) for name in OUR_OPTIONS} }; transformers has no class "
        "for it (norm_position='pre' models stay in this package's format)"
    )
