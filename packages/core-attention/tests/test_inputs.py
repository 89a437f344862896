"""What a stack prepares before its layers: config checks, token ids, positions and masks."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache, GPT2Config, LlamaConfig

from scratchformers.core_attention import (
    Attention,
    LearnedPositionalEmbedding,
    TokenEmbedding,
    build_attention_mask,
    check_config,
    cross_attention_mask,
    prepare_attention_inputs,
)


def _config(implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_hidden_layers=1)
    config._attn_implementation = implementation
    return config


# ---------------------------------------------------------------------------------------------
# check_config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vocab_size": 0}, r"vocab_size must be at least 1, got 0"),
        ({"hidden_size": -4}, r"hidden_size must be at least 1, got -4"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be at least 1, got 0"),
        ({"num_key_value_heads": 0}, r"num_key_value_heads must be at least 1, got 0"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers must be at least 1"),
        ({"intermediate_size": 0}, r"intermediate_size must be at least 1"),
        ({"rms_norm_eps": 0.0}, r"rms_norm_eps must be positive.*got 0.0"),
        ({"rms_norm_eps": -1.0}, r"rms_norm_eps must be positive.*got -1.0"),
        ({"num_key_value_heads": 2}, r"num_key_value_heads=2 must divide num_attention_heads=3"),
        ({"hidden_size": 13, "head_dim": None}, r"hidden_size=13 is not divisible by.*=3"),
        ({"attention_dropout": 1.0}, r"attention_dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_values_that_cannot_work_name_the_field(fields: dict, message: str) -> None:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_key_value_heads=3)
    for name, value in fields.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_aliased_fields_are_named_as_the_user_wrote_them() -> None:
    # GPT-2 calls its width n_embd and its head count n_head.
    config = GPT2Config(n_embd=40, n_head=5)
    check_config(config)
    config.n_head = 0
    with pytest.raises(ValueError, match=r"n_head must be at least 1, got 0"):
        check_config(config)
    config = GPT2Config(n_embd=40, n_head=3)
    with pytest.raises(ValueError, match=r"n_embd=40 is not divisible by n_head=3"):
        check_config(config)
    config = GPT2Config(layer_norm_epsilon=-1.0)
    with pytest.raises(ValueError, match=r"layer_norm_epsilon must be positive"):
        check_config(config)
    config = GPT2Config(resid_pdrop=1.5)
    with pytest.raises(ValueError, match=r"resid_pdrop must be in \[0, 1\)"):
        check_config(config)


def test_a_working_config_passes_and_none_means_derived() -> None:
    config = LlamaConfig(hidden_size=12, num_attention_heads=3, num_key_value_heads=1)
    config.head_dim = None  # derived from the width
    check_config(config)


# ---------------------------------------------------------------------------------------------
# TokenEmbedding


def test_token_ids_outside_the_vocabulary_are_named() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"token id 10, outside .* vocabulary of 10 tokens"):
        embedding(torch.tensor([[1, 2, 10]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        embedding(torch.tensor([[-1, 2]]))
    assert embedding(torch.tensor([[0, 9]])).shape == (1, 2, 4)


def test_float_and_one_dimensional_ids_are_refused() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"input_ids must hold integer token ids, got dtype"):
        embedding(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\), got shape \(3,\)"):
        embedding(torch.tensor([1, 2, 3]))


def test_empty_ids_and_the_callers_argument_name() -> None:
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"input_ids is empty: shape \(2, 0\)"):
        embedding(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"decoder_input_ids holds token id 12"):
        embedding(torch.tensor([[12]]), argument="decoder_input_ids")


def test_token_embedding_is_an_embedding_in_the_state_dict() -> None:
    embedding = TokenEmbedding(10, 4)
    plain = torch.nn.Embedding(10, 4)
    plain.load_state_dict(embedding.state_dict())
    ids = torch.tensor([[3, 1, 4]])
    assert torch.equal(embedding(ids), plain(ids))


# ---------------------------------------------------------------------------------------------
# LearnedPositionalEmbedding offset


def test_learned_positions_with_an_offset_read_rows_after_it() -> None:
    # BART's table has max_position_embeddings + 2 rows; position p is row p + 2.
    table = LearnedPositionalEmbedding(6, 3, offset=2)
    assert table.weight.shape == (8, 3)
    positions = torch.tensor([[0, 1, 5]])
    assert torch.equal(table(positions), table.weight[positions + 2])
    with pytest.raises(ValueError, match=r"position 6 is out of range.*max_position_embeddings=6"):
        table(torch.tensor([[6]]))


# ---------------------------------------------------------------------------------------------
# prepare_attention_inputs


def test_positions_follow_the_padding_or_count() -> None:
    embeds = torch.zeros(2, 4, 12)
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    following, _ = prepare_attention_inputs(
        _config(), embeds, padding, None, causal=True, positions="padding"
    )
    assert torch.equal(following, torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]]))
    counting, _ = prepare_attention_inputs(
        _config(), embeds, padding, None, causal=False, positions="count"
    )
    assert torch.equal(counting, torch.tensor([[0, 1, 2, 3]]))
    given = torch.tensor([[7, 8, 9, 10]])
    kept, _ = prepare_attention_inputs(_config(), embeds, padding, None, given, causal=True)
    assert kept is given


def test_counting_positions_continue_after_the_cache() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 3, 5, 4), torch.zeros(1, 3, 5, 4), 0)
    positions, mask = prepare_attention_inputs(
        _config(), torch.zeros(1, 2, 12), None, cache, causal=True, positions="count"
    )
    assert torch.equal(positions, torch.tensor([[5, 6]]))
    expected = build_attention_mask(
        None, batch_size=1, query_length=2, key_length=7, causal=True, past_length=5
    )
    assert torch.equal(mask, expected)


def test_the_mask_is_the_one_builders_for_the_configured_backend() -> None:
    embeds = torch.zeros(2, 3, 12)
    padding = torch.tensor([[0, 1, 1], [1, 1, 1]])
    for implementation in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        _, mask = prepare_attention_inputs(
            _config(implementation), embeds, padding, None, causal=True
        )
        expected = build_attention_mask(
            padding,
            batch_size=2,
            query_length=3,
            key_length=3,
            causal=True,
            attn_implementation=implementation,
        )
        assert torch.equal(mask, expected), implementation


def test_an_encoder_decoder_cache_counts_its_self_attention_half() -> None:
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    cache.self_attention_cache.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 0)
    cache.cross_attention_cache.update(torch.zeros(1, 3, 9, 4), torch.zeros(1, 3, 9, 4), 0)
    positions, _ = prepare_attention_inputs(
        _config(), torch.zeros(1, 1, 12), None, cache, causal=True, positions="count"
    )
    assert torch.equal(positions, torch.tensor([[4]]))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(2, 3), r"attention_mask covers 3 tokens, but the inputs have 4"),
        (torch.ones(2, 5), r"attention_mask covers 5 tokens, but the inputs have 4"),
        (torch.ones(3, 4), r"attention_mask must be \(batch, keys\) = \(2, \.\.\.\).*\(3, 4\)"),
        (torch.ones(2, 1, 4), r"attention_mask must be \(batch, keys\).*\(2, 1, 4\)"),
    ],
)
def test_a_mask_that_does_not_fit_the_inputs_is_refused(mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_attention_inputs(_config(), torch.zeros(2, 4, 12), mask, None, causal=True)
    with pytest.raises(ValueError, match="decoder_" + message):
        prepare_attention_inputs(
            _config(), torch.zeros(2, 4, 12), mask, None, causal=True, argument_prefix="decoder_"
        )


def test_with_a_cache_the_mask_must_cover_the_cached_tokens_too() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 3, 5, 4), torch.zeros(1, 3, 5, 4), 0)
    with pytest.raises(ValueError, match=r"covers 2 tokens.*plus 5 cached"):
        prepare_attention_inputs(
            _config(), torch.zeros(1, 2, 12), torch.ones(1, 2), cache, causal=True
        )
    prepare_attention_inputs(_config(), torch.zeros(1, 2, 12), torch.ones(1, 7), cache, causal=True)


@pytest.mark.parametrize("shape", [(0, 3, 12), (2, 0, 12)])
def test_empty_inputs_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"decoder_inputs_embeds is empty: shape"):
        prepare_attention_inputs(
            _config(), torch.zeros(shape), None, None, causal=False, argument_prefix="decoder_"
        )


def test_cross_attention_mask_hides_encoder_padding_only() -> None:
    encoder_padding = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask = cross_attention_mask(_config(), torch.zeros(2, 3, 12), encoder_padding)
    assert mask.shape == (2, 1, 3, 5)
    assert torch.equal(mask[:, 0, 0], encoder_padding.bool())
    assert torch.equal(mask[:, 0, 2], encoder_padding.bool())
    assert cross_attention_mask(_config(), torch.zeros(2, 3, 12), None) is None
    assert cross_attention_mask(_config(), torch.zeros(2, 3, 12), torch.ones(2, 5)) is None


# ---------------------------------------------------------------------------------------------
# Attention probabilities that a backend cannot return


@pytest.mark.parametrize("how", ["argument", "config"])
def test_attentions_requested_from_sdpa_are_an_error(how: str) -> None:
    config = _config("sdpa")
    attention = Attention(12, 3, config=config)
    states = torch.randn(1, 4, 12)
    kwargs = {}
    if how == "argument":
        kwargs["output_attentions"] = True
    else:
        # transformers refuses to set the flag while sdpa is configured; set it under eager.
        config._attn_implementation = "eager"
        config.output_attentions = True
        config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match=r"output_attentions needs the eager backend.*'sdpa'"):
        attention(states, **kwargs)
    config._attn_implementation = "eager"
    _, probabilities = attention(states, **kwargs)
    assert probabilities.shape == (1, 3, 4, 4)
    config._attn_implementation = "sdpa"
    assert attention(states, output_attentions=False)[1] is None
