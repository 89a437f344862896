"""The KV cache: decoding step by step, chunked prefill and static caches give the numbers of one
full forward; cross-attention keys and values are computed once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedConfig, StaticCache
from transformers.cache_utils import Cache

from scratchformers.core_attention import (
    Attention,
    RotaryEmbedding,
    apply_rotary,
    build_attention_mask,
    cache_lengths,
    position_ids_from_padding_mask,
)

BACKENDS = ("eager", "sdpa")
BATCH, LENGTH, HIDDEN, HEADS, HEAD_DIM = 3, 7, 48, 3, 16
LEFT_PADDING = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])


def config_for(implementation: str) -> PreTrainedConfig:
    config = PreTrainedConfig()
    config._attn_implementation = implementation
    return config


def static_cache(max_cache_len: int, kv_heads: int = HEADS) -> StaticCache:
    config = PreTrainedConfig(
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        hidden_size=HIDDEN,
        num_key_value_heads=kv_heads,
        head_dim=HEAD_DIM,
    )
    return StaticCache(config=config, max_cache_len=max_cache_len)


def rotary_for(
    rotary: RotaryEmbedding | None,
    padding: torch.Tensor | None,
    query_length: int,
    past_length: int | torch.Tensor = 0,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if rotary is None:
        return None
    return rotary(position_ids_from_padding_mask(padding, query_length, past_length))


def full_forward(
    attention: Attention,
    x: torch.Tensor,
    padding: torch.Tensor | None,
    rotary: RotaryEmbedding | None,
) -> torch.Tensor:
    batch, length, _ = x.shape
    mask = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=length,
        key_length=length,
        causal=True,
        attn_implementation=attention.attn_implementation,
    )
    with torch.no_grad():
        output, _ = attention(x, mask, position_embeddings=rotary_for(rotary, padding, length))
    return output


def chunked_forward(
    attention: Attention,
    x: torch.Tensor,
    padding: torch.Tensor | None,
    rotary: RotaryEmbedding | None,
    chunks: list[int],
    cache: Cache,
    masks: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Feed ``x`` in chunks of the given sizes through the cache, building each step's mask the
    way a model does: lengths from the cache, padding mask over everything seen so far."""
    batch = x.shape[0]
    outputs, start = [], 0
    for size in chunks:
        end = start + size
        past_length, key_length = cache_lengths(cache, size, attention.layer_idx)
        seen = None if padding is None else padding[:, :end]
        mask = build_attention_mask(
            seen,
            batch_size=batch,
            query_length=size,
            key_length=key_length,
            causal=True,
            past_length=past_length,
            attn_implementation=attention.attn_implementation,
        )
        if masks is not None:
            masks.append(mask)
        with torch.no_grad():
            output, _ = attention(
                x[:, start:end],
                mask,
                position_embeddings=rotary_for(rotary, seen, size, past_length),
                cache=cache,
            )
        outputs.append(output)
        start = end
    assert start == x.shape[1]
    return torch.cat(outputs, dim=1)


def make_attention(implementation: str, kv_heads: int) -> Attention:
    return Attention(
        HIDDEN, HEADS, kv_heads, config=config_for(implementation), is_causal=True, layer_idx=0
    ).eval()


# ---------------------------------------------------------------------------------------------
# Self attention through a cache == one full forward


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("rope", [False, True], ids=["no-rope", "rope"])
@pytest.mark.parametrize("padding", [None, LEFT_PADDING], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize("kv_heads", [3, 1], ids=["mha", "mqa"])
def test_decode_one_token_at_a_time_dynamic_cache(
    implementation: str, rope: bool, padding: torch.Tensor | None, kv_heads: int
) -> None:
    attention = make_attention(implementation, kv_heads)
    rotary = RotaryEmbedding(HEAD_DIM) if rope else None
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, padding, rotary)

    cache = DynamicCache()
    stepped = chunked_forward(attention, x, padding, rotary, [1] * LENGTH, cache)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)

    # The cache holds every key, rotated at its own position, and nothing else.
    keys = cache.layers[0].keys
    assert keys.shape == (BATCH, kv_heads, LENGTH, HEAD_DIM)
    with torch.no_grad():
        projected = attention.k_proj(x).view(BATCH, LENGTH, kv_heads, HEAD_DIM).transpose(1, 2)
        if rotary is not None:
            cos, sin = rotary(position_ids_from_padding_mask(padding, LENGTH))
            projected, _ = apply_rotary(projected, projected, cos, sin)
    torch.testing.assert_close(keys, projected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("rope", [False, True], ids=["no-rope", "rope"])
@pytest.mark.parametrize("padding", [None, LEFT_PADDING], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize(
    "chunks", [[1] * LENGTH, [4, 1, 1, 1], [3, 2, 2]], ids=["decode", "prefill+decode", "chunked"]
)
def test_static_cache(
    implementation: str, rope: bool, padding: torch.Tensor | None, chunks: list[int]
) -> None:
    attention = make_attention(implementation, kv_heads=1)
    rotary = RotaryEmbedding(HEAD_DIM) if rope else None
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, padding, rotary)

    cache = static_cache(LENGTH + 3, kv_heads=1)
    masks: list[torch.Tensor | None] = []
    stepped = chunked_forward(attention, x, padding, rotary, chunks, cache, masks)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)
    # The static cache's empty slots must be hidden explicitly at every step.
    assert all(mask is not None and mask.shape[-1] == LENGTH + 3 for mask in masks)
    assert int(cache.get_seq_length()) == LENGTH


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("chunks", [[3, 2, 2], [2, 5], [5, 2], [1, 3, 3]])
def test_chunked_prefill_without_padding(implementation: str, chunks: list[int]) -> None:
    attention = make_attention(implementation, kv_heads=3)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, None, None)
    masks: list[torch.Tensor | None] = []
    stepped = chunked_forward(attention, x, None, None, chunks, DynamicCache(), masks)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)
    # Several queries after cached keys: sdpa's is_causal flag (top-left) would be wrong, so
    # the mask builder has to produce a mask.
    for size, mask in zip(chunks[1:], masks[1:], strict=True):
        if size > 1:
            assert mask is not None


def test_is_causal_flag_would_be_wrong_for_chunked_prefill() -> None:
    # Guards the test above: the same chunk without a mask gives other numbers.
    attention = make_attention("sdpa", kv_heads=3)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, None, None)
    cache = DynamicCache()
    with torch.no_grad():
        attention(x[:, :3], None, cache=cache)
        wrong, _ = attention(x[:, 3:5], None, cache=cache)
    assert not torch.allclose(wrong, expected[:, 3:5], atol=1e-3)


@st.composite
def partitions(draw: st.DrawFn, total: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(draw(st.integers(1, total - sum(sizes))))
    return sizes


@given(data=st.data())
def test_any_chunking_any_cache_equals_full_forward(data: st.DataObject) -> None:
    implementation = data.draw(st.sampled_from(BACKENDS), label="backend")
    kv_heads = data.draw(st.sampled_from([1, 3]), label="kv_heads")
    rope = data.draw(st.booleans(), label="rope")
    use_static = data.draw(st.booleans(), label="static cache")
    chunks = data.draw(partitions(LENGTH), label="chunks")
    pads = data.draw(st.lists(st.integers(0, LENGTH), min_size=BATCH, max_size=BATCH), label="pads")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    padding = torch.tensor([[0] * p + [1] * (LENGTH - p) for p in pads])

    attention = make_attention(implementation, kv_heads)
    rotary = RotaryEmbedding(HEAD_DIM, rotary_dim=8) if rope else None
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, padding, rotary)
    cache = static_cache(LENGTH + 2, kv_heads) if use_static else DynamicCache()
    stepped = chunked_forward(attention, x, padding, rotary, chunks, cache)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_self_attention_uses_the_self_half_of_an_encoder_decoder_cache(implementation: str) -> None:
    attention = make_attention(implementation, kv_heads=1)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    expected = full_forward(attention, x, LEFT_PADDING, None)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    stepped = chunked_forward(attention, x, LEFT_PADDING, None, [3] + [1] * 4, cache)
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=1e-5)
    assert cache.self_attention_cache.get_seq_length(0) == LENGTH
    assert cache.cross_attention_cache.get_seq_length(0) == 0


# ---------------------------------------------------------------------------------------------
# Cross attention: the encoder's keys and values are computed once


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def cross_attention(implementation: str, layer_idx: int = 0) -> Attention:
    return Attention(
        HIDDEN,
        HEADS,
        1,
        config=config_for(implementation),
        is_cross_attention=True,
        key_value_size=20,
        layer_idx=layer_idx,
    ).eval()


ENCODER_PADDING = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("pass_encoder_every_step", [False, True])
def test_cross_attention_cache_is_computed_once(
    implementation: str, pass_encoder_every_step: bool
) -> None:
    attention = cross_attention(implementation)
    k_calls, v_calls = count_calls(attention.k_proj), count_calls(attention.v_proj)
    encoder = torch.randn(BATCH, 7, 20)
    decoder = torch.randn(BATCH, 4, HIDDEN)
    step_mask = build_attention_mask(
        ENCODER_PADDING, batch_size=BATCH, query_length=1, key_length=7, causal=False
    )
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    outputs = []
    with torch.no_grad():
        for step in range(4):
            states = encoder if step == 0 or pass_encoder_every_step else None
            output, _ = attention(
                decoder[:, step : step + 1], step_mask, key_value_states=states, cache=cache
            )
            outputs.append(output)
    assert k_calls[0] == 1
    assert v_calls[0] == 1
    assert cache.is_updated[0] is True
    assert cache.cross_attention_cache.get_seq_length(0) == 7
    assert cache.self_attention_cache.get_seq_length(0) == 0

    full_mask = build_attention_mask(
        ENCODER_PADDING, batch_size=BATCH, query_length=4, key_length=7, causal=False
    )
    with torch.no_grad():
        expected, _ = attention(decoder, full_mask, key_value_states=encoder)
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_cache_is_per_layer() -> None:
    first, second = cross_attention("sdpa", 0), cross_attention("sdpa", 1)
    encoder = torch.randn(BATCH, 7, 20)
    decoder = torch.randn(BATCH, 2, HIDDEN)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        a0, _ = first(decoder[:, :1], key_value_states=encoder, cache=cache)
        b0, _ = second(decoder[:, :1], key_value_states=encoder, cache=cache)
        a1, _ = first(decoder[:, 1:], cache=cache)
        b1, _ = second(decoder[:, 1:], cache=cache)
        expected_a, _ = first(decoder, key_value_states=encoder)
        expected_b, _ = second(decoder, key_value_states=encoder)
    torch.testing.assert_close(torch.cat([a0, a1], 1), expected_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([b0, b1], 1), expected_b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected_a, expected_b, atol=1e-3)


def test_cross_attention_rejects_a_plain_dynamic_cache() -> None:
    attention = cross_attention("sdpa")
    with pytest.raises(ValueError, match="EncoderDecoderCache"):
        attention(
            torch.randn(BATCH, 1, HIDDEN),
            key_value_states=torch.randn(BATCH, 7, 20),
            cache=DynamicCache(),
        )


def test_cross_attention_first_step_needs_encoder_states() -> None:
    attention = cross_attention("sdpa")
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with pytest.raises(ValueError, match="key_value_states"):
        attention(torch.randn(BATCH, 1, HIDDEN), cache=cache)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_cross_attention_with_a_static_cross_cache(implementation: str) -> None:
    # generate(cache_implementation="static") pairs the self cache with a StaticCache sized to
    # the encoder output for the cross half.
    attention = cross_attention(implementation)
    k_calls = count_calls(attention.k_proj)
    encoder = torch.randn(BATCH, 7, 20)
    decoder = torch.randn(BATCH, 3, HIDDEN)
    cache = EncoderDecoderCache(static_cache(LENGTH, kv_heads=3), static_cache(7, kv_heads=1))
    step_mask = build_attention_mask(
        ENCODER_PADDING, batch_size=BATCH, query_length=1, key_length=7, causal=False
    )
    with torch.no_grad():
        outputs = [
            attention(
                decoder[:, step : step + 1],
                step_mask,
                key_value_states=encoder if step == 0 else None,
                cache=cache,
            )[0]
            for step in range(3)
        ]
        full_mask = build_attention_mask(
            ENCODER_PADDING, batch_size=BATCH, query_length=3, key_length=7, causal=False
        )
        expected, _ = attention(decoder, full_mask, key_value_states=encoder)
    assert k_calls[0] == 2  # once through the cache, once for the reference
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, atol=1e-5, rtol=1e-5)
