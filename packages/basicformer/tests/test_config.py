"""BasicFormerConfig: validation that names the field, the modes the task models set, and the
save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig

from scratchformers.basicformer import (
    BasicFormerConfig,
    BasicFormerForCausalLM,
    BasicFormerForMaskedLM,
    BasicFormerForSeq2SeqLM,
    BasicFormerModel,
)
from scratchformers.core_attention.testing import assert_config_error, invalid_config_values

TINY = {"vocab_size": 101, "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 50, "num_attention_heads": 3}, "hidden_size"),
        ({"num_attention_heads": 3, "num_key_value_heads": 2}, "num_key_value_heads"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type"),
        ({"norm_position": "sandwich"}, "norm_position"),
        ({"norm_type": "batchnorm"}, "norm_type"),
        ({"mlp_type": "swiglu"}, "mlp_type"),
        ({"hidden_act": "swishy"}, "hidden_act"),
        ({"is_decoder": True, "is_encoder_decoder": True}, "is_encoder_decoder"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides: dict[str, object], field: str) -> None:
    options = {**TINY, **overrides}
    with pytest.raises(ValueError, match=field):
        BasicFormerConfig(**options)


@pytest.mark.parametrize(
    ("field", "values"),
    [pytest.param(f, v, id=f) for f, v in invalid_config_values(BasicFormerConfig(**TINY)).items()],
)
def test_impossible_sizes_and_epsilons_name_the_field(field: str, values: tuple) -> None:
    """Every size and head count (key/value heads included) and the norm epsilon, refused by
    the config and, when set afterwards, by each task model."""
    builders = [BasicFormerForCausalLM, BasicFormerForMaskedLM, BasicFormerForSeq2SeqLM]
    assert_config_error(BasicFormerConfig, TINY, field, values, builders)


def test_rotary_needs_even_head_dim() -> None:
    # 45 / 3 = 15 channels per head: fine for learned positions, impossible to rotate in pairs.
    BasicFormerConfig(**{**TINY, "hidden_size": 45, "position_embedding_type": "learned"})
    with pytest.raises(ValueError, match="head_dim"):
        BasicFormerConfig(**{**TINY, "hidden_size": 45, "position_embedding_type": "rotary"})


@settings(max_examples=40)  # building a config is cheap; cover all three branches
@given(
    hidden_size=st.integers(1, 64),
    heads=st.integers(1, 8),
    kv_heads=st.integers(1, 8),
)
def test_head_arithmetic_is_validated_exactly(hidden_size: int, heads: int, kv_heads: int) -> None:
    options = {
        "vocab_size": 11,
        "num_hidden_layers": 1,
        "hidden_size": hidden_size,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "position_embedding_type": "learned",
    }
    if hidden_size % heads:
        with pytest.raises(ValueError, match=f"hidden_size={hidden_size} is not divisible"):
            BasicFormerConfig(**options)
    elif heads % kv_heads:
        with pytest.raises(ValueError, match=f"num_key_value_heads={kv_heads} must divide"):
            BasicFormerConfig(**options)
    else:
        config = BasicFormerConfig(**options)
        assert config.head_dim * config.num_attention_heads == hidden_size
        assert config.num_key_value_heads == kv_heads


def test_derived_defaults() -> None:
    config = BasicFormerConfig(**TINY, bos_token_id=7)
    assert config.num_key_value_heads == 3
    assert config.head_dim == 16
    assert config.intermediate_size == 4 * 48
    assert config.decoder_start_token_id == 7
    # Explicit values are kept.
    explicit = BasicFormerConfig(
        **TINY, num_key_value_heads=1, head_dim=8, intermediate_size=33, decoder_start_token_id=5
    )
    assert (explicit.num_key_value_heads, explicit.head_dim, explicit.intermediate_size) == (
        1,
        8,
        33,
    )
    assert explicit.decoder_start_token_id == 5


def test_explicit_head_dim_lifts_the_divisibility_rule() -> None:
    config = BasicFormerConfig(**{**TINY, "hidden_size": 50, "head_dim": 16})
    model = BasicFormerModel(config)
    assert model.encoder.layers[0].self_attn.q_proj.weight.shape == (3 * 16, 50)


def test_task_models_set_their_mode() -> None:
    causal = BasicFormerForCausalLM(BasicFormerConfig(**TINY))
    assert causal.config.is_decoder and not causal.config.is_encoder_decoder
    assert causal.model.encoder is None
    assert causal.model.decoder.causal and not causal.model.decoder.cross_attention

    seq2seq = BasicFormerForSeq2SeqLM(BasicFormerConfig(**TINY))
    assert seq2seq.config.is_encoder_decoder and not seq2seq.config.is_decoder
    assert not seq2seq.model.encoder.causal
    assert seq2seq.model.decoder.causal and seq2seq.model.decoder.cross_attention
    # The encoder owns the one token table; the decoder borrows it.
    assert seq2seq.model.decoder.embed_tokens is None

    masked = BasicFormerForMaskedLM(BasicFormerConfig(**TINY))
    assert not masked.config.is_decoder and not masked.config.is_encoder_decoder
    assert masked.model.decoder is None and not masked.model.encoder.causal


@pytest.mark.parametrize(
    ("model_class", "overrides", "field"),
    [
        (BasicFormerForCausalLM, {"is_encoder_decoder": True}, "is_encoder_decoder"),
        (BasicFormerForMaskedLM, {"is_decoder": True}, "is_decoder"),
        (BasicFormerForMaskedLM, {"is_encoder_decoder": True}, "is_encoder_decoder"),
        (BasicFormerForSeq2SeqLM, {"is_decoder": True}, "is_decoder"),
        (
            BasicFormerForCausalLM,
            {"is_decoder": True, "add_cross_attention": True},
            "add_cross_attention",
        ),
    ],
)
def test_task_model_refuses_contradicting_flags(
    model_class: type, overrides: dict[str, object], field: str
) -> None:
    config = BasicFormerConfig(**TINY, **overrides)
    with pytest.raises(ValueError, match=field):
        model_class(config)


def test_config_save_load_round_trip(tmp_path: Path) -> None:
    config = BasicFormerConfig(
        **TINY,
        num_key_value_heads=1,
        position_embedding_type="rotary",
        rope_theta=500.0,
        norm_position="post",
        hidden_act="relu",
        tie_word_embeddings=False,
        is_decoder=True,
        add_cross_attention=True,
        decoder_start_token_id=3,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "scratchformers-basicformer"
    assert saved["position_embedding_type"] == "rotary"

    for loaded in (
        BasicFormerConfig.from_pretrained(tmp_path),
        AutoConfig.from_pretrained(tmp_path),
    ):
        assert type(loaded) is BasicFormerConfig
        loaded_fields = {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"}
        fields = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        assert loaded_fields == fields
        assert loaded.rope_theta == 500.0
        assert loaded.norm_position == "post"
        assert loaded.hidden_act == "relu"
        assert loaded.num_key_value_heads == 1
        assert loaded.is_decoder and loaded.add_cross_attention
        assert loaded.tie_word_embeddings is False
        assert loaded.decoder_start_token_id == 3
