"""scratchformers' attention core against transformers' own code, on the same inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import DynamicCache, LlamaConfig, PreTrainedConfig, StaticCache
from transformers.integrations.sdpa_attention import (
    sdpa_attention_forward as hf_sdpa_attention_forward,
)
from transformers.masking_utils import create_causal_mask, sdpa_mask
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.models.llama.modeling_llama import (
    eager_attention_forward as hf_eager_attention_forward,
)
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

from scratchformers.core_attention import (
    Attention,
    RotaryEmbedding,
    apply_rotary,
    build_attention_mask,
    cache_lengths,
    eager_attention_forward,
    position_ids_from_padding_mask,
    sdpa_attention_forward,
    sinusoidal_position_embedding,
    to_additive_mask,
)

BACKENDS = ("eager", "sdpa")
ROPE_THETA = 500.0


@st.composite
def padding_masks(draw: st.DrawFn, batch: int, length: int) -> torch.Tensor | None:
    """None, or (batch, length) 0/1 with random left or right padding; rows may be all padding."""
    if draw(st.booleans()):
        return None
    rows = []
    for _ in range(batch):
        side = draw(st.sampled_from(["left", "right", "none"]))
        pads = 0 if side == "none" else draw(st.integers(0, length))
        real = length - pads
        rows.append([0] * pads + [1] * real if side == "left" else [1] * real + [0] * pads)
    return torch.tensor(rows, dtype=torch.long)


def llama_config(implementation: str = "sdpa") -> LlamaConfig:
    config = LlamaConfig(
        hidden_size=48,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=1,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        attention_bias=False,
    )
    config._attn_implementation = implementation
    return config


# ---------------------------------------------------------------------------------------------
# Attention functions


@given(data=st.data())
def test_sdpa_function_matches_transformers(data: st.DataObject) -> None:
    heads, kv_heads = data.draw(st.sampled_from([(3, 3), (3, 1), (6, 2), (4, 2)]), label="heads")
    batch = data.draw(st.integers(1, 3), label="batch")
    queries = data.draw(st.integers(1, 5), label="queries")
    past = data.draw(st.integers(0, 3), label="past")
    causal = data.draw(st.booleans(), label="causal")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    use_mask = data.draw(st.booleans(), label="use mask")
    scaling = data.draw(st.none() | st.floats(0.1, 1.0), label="scaling")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    keys = past + queries
    head_dim = 8
    query = torch.randn(batch, heads, queries, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    mask = None
    if use_mask:
        mask = build_attention_mask(
            padding,
            batch_size=batch,
            query_length=queries,
            key_length=keys,
            causal=causal,
            past_length=past,
        )
    module = SimpleNamespace(
        is_causal=causal, num_key_value_groups=heads // kv_heads, training=False
    )
    ours, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scaling)
    theirs, _ = hf_sdpa_attention_forward(module, query, key, value, mask, scaling=scaling)
    assert ours.shape == theirs.shape == (batch, queries, heads, head_dim)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@given(data=st.data())
def test_eager_function_matches_transformers(data: st.DataObject) -> None:
    heads, kv_heads = data.draw(st.sampled_from([(3, 3), (3, 1), (6, 2)]), label="heads")
    batch = data.draw(st.integers(1, 3), label="batch")
    queries = data.draw(st.integers(1, 5), label="queries")
    past = data.draw(st.integers(0, 3), label="past")
    empty = data.draw(st.integers(0, 2), label="empty slots")
    causal = data.draw(st.booleans(), label="causal")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    scaling = data.draw(st.floats(0.1, 1.0), label="scaling")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    keys = past + queries + empty
    query = torch.randn(batch, heads, queries, 8, generator=generator)
    key = torch.randn(batch, kv_heads, keys, 8, generator=generator)
    value = torch.randn(batch, kv_heads, keys, 8, generator=generator)
    boolean = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=queries,
        key_length=keys,
        causal=causal,
        past_length=past,
    )
    if boolean is None:
        # transformers' eager has no causal flag: it needs the mask spelled out.
        boolean = build_attention_mask(
            torch.ones(batch, past + queries, dtype=torch.long),
            batch_size=batch,
            query_length=queries,
            key_length=keys,
            causal=causal,
            past_length=past,
        )
        if boolean is None:
            boolean = torch.ones(batch, 1, queries, keys, dtype=torch.bool)
    additive = to_additive_mask(boolean, torch.float32)
    module = SimpleNamespace(
        is_causal=causal, num_key_value_groups=heads // kv_heads, training=False
    )
    theirs, their_probabilities = hf_eager_attention_forward(
        module, query, key, value, additive, scaling=scaling
    )
    seen = boolean.expand(batch, heads, queries, keys).any(-1)  # (batch, heads, queries)
    for mask in (additive, boolean):
        ours, our_probabilities = eager_attention_forward(
            module, query, key, value, mask, scaling=scaling
        )
        torch.testing.assert_close(
            ours[seen.transpose(1, 2)], theirs[seen.transpose(1, 2)], atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            our_probabilities[seen], their_probabilities[seen], atol=1e-6, rtol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Positions


def test_rotary_matches_llama() -> None:
    config = llama_config()
    theirs = LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(16, base=ROPE_THETA)
    padding = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    position_ids = position_ids_from_padding_mask(padding, 7)
    x = torch.randn(3, 7, 48)
    their_cos, their_sin = theirs(x, position_ids)
    our_cos, our_sin = ours(position_ids)
    torch.testing.assert_close(our_cos, their_cos, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(our_sin, their_sin, atol=1e-6, rtol=1e-6)

    query, key = torch.randn(3, 3, 7, 16), torch.randn(3, 1, 7, 16)
    their_q, their_k = apply_rotary_pos_emb(query, key, their_cos, their_sin)
    our_q, our_k = apply_rotary(query, key, our_cos, our_sin)
    torch.testing.assert_close(our_q, their_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(our_k, their_k, atol=1e-6, rtol=1e-6)

    # Positions past the prompt (decoding) too.
    later = position_ids_from_padding_mask(torch.ones(2, 40, dtype=torch.long), 3, past_length=37)
    torch.testing.assert_close(ours(later)[0], theirs(x[:2], later)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [8, 7, 16, 5])
def test_sinusoidal_matches_marian(dim: int) -> None:
    table = MarianSinusoidalPositionalEmbedding(32, dim).create_weight()
    ours = sinusoidal_position_embedding(torch.arange(32), dim)
    assert ours.shape == table.shape == (32, dim)
    torch.testing.assert_close(ours, table, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Masks


def as_used_by_sdpa(mask: torch.Tensor | None, batch: int, queries: int, keys: int, causal: bool):
    """Our mask as the sdpa backend applies it: ``None`` means the is_causal flag for several
    causal queries (top-left aligned), else nothing hidden."""
    if mask is not None:
        return mask.expand(batch, 1, queries, keys)
    if causal and queries > 1:
        return torch.ones(queries, keys, dtype=torch.bool).tril().expand(batch, 1, queries, keys)
    return torch.ones(batch, 1, queries, keys, dtype=torch.bool)


@given(data=st.data())
def test_causal_mask_matches_sdpa_mask(data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, 3), label="batch")
    queries = data.draw(st.integers(1, 5), label="queries")
    past = data.draw(st.integers(0, 4), label="past")
    empty = data.draw(st.integers(0, 3), label="empty slots")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    keys = past + queries + empty
    hf_padding = None if padding is None else padding.bool()

    ours = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=queries,
        key_length=keys,
        causal=True,
        past_length=past,
    )
    materialized = sdpa_mask(
        batch_size=batch,
        q_length=queries,
        kv_length=keys,
        q_offset=past,
        attention_mask=hf_padding,
        allow_is_causal_skip=False,
    )
    assert torch.equal(as_used_by_sdpa(ours, batch, queries, keys, True), materialized)

    skipped = sdpa_mask(
        batch_size=batch,
        q_length=queries,
        kv_length=keys,
        q_offset=past,
        attention_mask=hf_padding,
        allow_is_causal_skip=True,
    )
    if ours is None:
        assert skipped is None or bool(skipped.all())
    elif skipped is not None:
        assert torch.equal(ours, skipped.expand_as(ours))


# (past, queries): prefill, decoding, chunked prefill
LENGTHS = [(0, 5), (3, 1), (3, 2), (0, 1), (4, 3)]


def _filled(cache, batch: int, tokens: int):
    if tokens:
        states = torch.zeros(batch, 1, tokens, 16)
        cache.update(states, states, 0)
    return cache


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize(
    ("cache_kind", "past", "queries"),
    [
        ("none", 0, 5),
        ("none", 0, 1),
        *[(kind, past, queries) for kind in ("dynamic", "static") for past, queries in LENGTHS],
    ],
)
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "left-padding"])
def test_mask_matches_create_causal_mask(
    implementation: str, cache_kind: str, past: int, queries: int, padded: bool
) -> None:
    batch = 3
    config = llama_config(implementation)
    padding = torch.ones(batch, past + queries, dtype=torch.long)
    if padded:
        padding[0, :2] = 0
        padding[2, : past + queries] = 0
        padding[2, -1] = 1
    if cache_kind == "dynamic":
        cache = _filled(DynamicCache(), batch, past)
    elif cache_kind == "static":
        cache = _filled(StaticCache(config=config, max_cache_len=past + queries + 2), batch, past)
    else:
        cache = None
    embeds = torch.randn(batch, queries, 48)
    position_ids = position_ids_from_padding_mask(padding, queries, past)

    past_length, key_length = cache_lengths(cache, queries)
    ours = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=queries,
        key_length=key_length,
        causal=True,
        past_length=past_length,
    )
    theirs = create_causal_mask(
        config, embeds, padding, cache, position_ids=position_ids, allow_is_causal_skip=False
    )
    assert theirs is not None
    if implementation == "eager":
        # transformers' eager mask is additive: 0 to attend, dtype min to hide.
        assert theirs.dtype == torch.float32
        theirs = theirs == 0
    expected = theirs.expand(batch, 1, queries, key_length)
    assert torch.equal(as_used_by_sdpa(ours, batch, queries, key_length, True), expected)


# ---------------------------------------------------------------------------------------------
# A whole attention layer: LlamaAttention's weights in ours


def _llama_pair(implementation: str) -> tuple[LlamaConfig, LlamaAttention, Attention]:
    config = llama_config(implementation)
    llama = LlamaAttention(config, layer_idx=0).eval()
    our_config = PreTrainedConfig()
    our_config._attn_implementation = implementation
    ours = Attention(
        48,
        3,
        1,
        config=our_config,
        is_causal=True,
        q_bias=False,
        k_bias=False,
        v_bias=False,
        o_bias=False,
        layer_idx=0,
    ).eval()
    ours.load_state_dict(llama.state_dict())  # q_proj/k_proj/v_proj/o_proj, no biases
    return config, llama, ours


PADDING = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])


@pytest.mark.parametrize("implementation", BACKENDS)
def test_attention_matches_llama_attention(implementation: str) -> None:
    config, llama, ours = _llama_pair(implementation)
    x = torch.randn(3, 7, 48)
    position_ids = position_ids_from_padding_mask(PADDING, 7)
    their_mask = create_causal_mask(config, x, PADDING, None, position_ids=position_ids)
    our_mask = build_attention_mask(
        PADDING, batch_size=3, query_length=7, key_length=7, causal=True
    )
    with torch.no_grad():
        theirs, their_probabilities = llama(
            x,
            position_embeddings=LlamaRotaryEmbedding(config)(x, position_ids),
            attention_mask=their_mask,
        )
        mine, my_probabilities = ours(
            x, our_mask, position_embeddings=RotaryEmbedding(16, base=ROPE_THETA)(position_ids)
        )
    real = PADDING.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-5)
    if implementation == "eager":
        seen = real[:, None, :].expand(3, 3, 7)
        torch.testing.assert_close(
            my_probabilities[seen], their_probabilities[seen], atol=1e-6, rtol=1e-5
        )


@pytest.mark.parametrize("implementation", BACKENDS)
def test_cached_decoding_matches_llama_attention(implementation: str) -> None:
    config, llama, ours = _llama_pair(implementation)
    x = torch.randn(3, 7, 48)
    their_rotary = LlamaRotaryEmbedding(config)
    our_rotary = RotaryEmbedding(16, base=ROPE_THETA)
    their_cache, our_cache = DynamicCache(), DynamicCache()
    theirs, mine = [], []
    for start, end in [(0, 4), (4, 5), (5, 7)]:
        size = end - start
        seen = PADDING[:, :end]
        chunk = x[:, start:end]
        position_ids = position_ids_from_padding_mask(seen, size, start)
        their_mask = create_causal_mask(config, chunk, seen, their_cache, position_ids=position_ids)
        past_length, key_length = cache_lengths(our_cache, size)
        our_mask = build_attention_mask(
            seen,
            batch_size=3,
            query_length=size,
            key_length=key_length,
            causal=True,
            past_length=past_length,
        )
        with torch.no_grad():
            theirs.append(
                llama(
                    chunk,
                    position_embeddings=their_rotary(chunk, position_ids),
                    attention_mask=their_mask,
                    cache=their_cache,
                )[0]
            )
            mine.append(
                ours(
                    chunk,
                    our_mask,
                    position_embeddings=our_rotary(position_ids),
                    cache=our_cache,
                )[0]
            )
    real = PADDING.bool()
    torch.testing.assert_close(
        torch.cat(mine, 1)[real], torch.cat(theirs, 1)[real], atol=1e-5, rtol=1e-5
    )
