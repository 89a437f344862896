"""Attention masks: the True/False pattern, the fast paths that return None, the backend formats."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import DynamicCache, PreTrainedConfig, StaticCache

from scratchformers.core_attention import (
    build_attention_mask,
    cache_lengths,
    causal_mask,
    to_additive_mask,
)

# ---------------------------------------------------------------------------------------------
# Reference implementations, written as loops so that they share nothing with the code under test


def brute_force_mask(
    padding: torch.Tensor | None, batch: int, queries: int, keys: int, causal: bool, past: int
) -> torch.Tensor:
    """What may query ``i`` (absolute position ``past + i``) see? Key ``j`` if it is not in the
    future (causal) and it is a real, already seen token (padding, zero beyond its end)."""
    out = torch.zeros(batch, 1, queries, keys, dtype=torch.bool)
    for b in range(batch):
        for i in range(queries):
            for j in range(keys):
                visible = True
                if causal and j > past + i:
                    visible = False
                if padding is not None and (j >= padding.shape[1] or int(padding[b, j]) == 0):
                    visible = False
                out[b, 0, i, j] = visible
    return out


def as_used_by_backend(
    mask: torch.Tensor | None, batch: int, queries: int, keys: int, causal: bool
) -> torch.Tensor:
    """The pattern the attention backends actually apply for a mask, including for ``None``:
    sdpa's ``is_causal`` flag (top-left aligned) for several causal queries, else nothing hidden."""
    if mask is not None:
        return mask.expand(batch, 1, queries, keys)
    if causal and queries > 1:
        top_left = torch.tensor([[j <= i for j in range(keys)] for i in range(queries)])
        return top_left.expand(batch, 1, queries, keys)
    return torch.ones(batch, 1, queries, keys, dtype=torch.bool)


@st.composite
def padding_masks(draw: st.DrawFn, batch: int, length: int) -> torch.Tensor | None:
    """None, or a (batch, length) 0/1 mask with random left or right padding per row; rows may
    be entirely padding."""
    if draw(st.booleans()):
        return None
    rows = []
    for _ in range(batch):
        side = draw(st.sampled_from(["left", "right", "none"]))
        pads = 0 if side == "none" else draw(st.integers(0, length))
        real = length - pads
        row = [0] * pads + [1] * real if side == "left" else [1] * real + [0] * pads
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# The pattern


@given(data=st.data())
def test_build_attention_mask_matches_brute_force(data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, 3), label="batch")
    queries = data.draw(st.integers(1, 5), label="queries")
    past = data.draw(st.integers(0, 4), label="past")
    empty_slots = data.draw(st.integers(0, 3), label="empty StaticCache slots")
    causal = data.draw(st.booleans(), label="causal")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    keys = past + queries + empty_slots

    mask = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=queries,
        key_length=keys,
        causal=causal,
        past_length=past,
    )

    if mask is not None:
        assert mask.dtype == torch.bool
        assert mask.shape == (batch, 1, queries, keys)
    expected = brute_force_mask(padding, batch, queries, keys, causal, past)
    assert torch.equal(as_used_by_backend(mask, batch, queries, keys, causal), expected)


def test_left_padded_causal_mask_by_hand() -> None:
    padding = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = build_attention_mask(padding, batch_size=2, query_length=4, key_length=4, causal=True)
    assert mask is not None
    expected_row0 = torch.tensor(
        [
            [False, False, False, False],  # a padding query sees nothing
            [False, False, False, False],
            [False, False, True, False],
            [False, False, True, True],
        ]
    )
    expected_row1 = torch.tensor(
        [
            [True, False, False, False],
            [True, True, False, False],
            [True, True, True, False],
            [True, True, True, True],
        ]
    )
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0], expected_row1)


def test_chunked_prefill_gets_explicit_bottom_right_mask() -> None:
    # 3 new queries after 2 cached tokens: sdpa's is_causal (top-left) would hide keys 1..4 from
    # query 0; query 0 sits at position 2 and must see keys 0, 1, 2.
    mask = build_attention_mask(
        None, batch_size=1, query_length=3, key_length=5, causal=True, past_length=2
    )
    assert mask is not None
    expected = torch.tensor(
        [
            [True, True, True, False, False],
            [True, True, True, True, False],
            [True, True, True, True, True],
        ]
    )
    assert torch.equal(mask[0, 0], expected)


def test_single_query_into_static_cache_hides_empty_slots() -> None:
    # One query at position 3, static cache of 6 slots: slots 4 and 5 are empty.
    mask = build_attention_mask(
        None, batch_size=2, query_length=1, key_length=6, causal=True, past_length=3
    )
    assert mask is not None
    assert mask.shape == (2, 1, 1, 6)
    expected = torch.tensor([True, True, True, True, False, False])
    assert torch.equal(mask[0, 0, 0], expected)
    assert torch.equal(mask[1, 0, 0], expected)


def test_tensor_past_length_equals_int_past_length() -> None:
    # StaticCache.get_seq_length() returns a 0-d tensor.
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    for queries, keys in [(1, 8), (2, 8), (1, 5)]:
        past = 5 - queries
        as_int = build_attention_mask(
            padding,
            batch_size=2,
            query_length=queries,
            key_length=keys,
            causal=True,
            past_length=past,
        )
        as_tensor = build_attention_mask(
            padding,
            batch_size=2,
            query_length=queries,
            key_length=keys,
            causal=True,
            past_length=torch.tensor(past),
        )
        assert as_int is not None and as_tensor is not None
        assert torch.equal(as_int, as_tensor)
        assert torch.equal(as_int, brute_force_mask(padding, 2, queries, keys, True, past))
    # And the fast path still applies to a tensor past length.
    assert (
        build_attention_mask(
            None,
            batch_size=2,
            query_length=1,
            key_length=5,
            causal=True,
            past_length=torch.tensor(4),
        )
        is None
    )


# ---------------------------------------------------------------------------------------------
# Fast paths


@pytest.mark.parametrize("padding", [None, torch.ones(3, 5, dtype=torch.long)])
def test_no_padding_non_causal_is_none(padding: torch.Tensor | None) -> None:
    assert (
        build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=False)
        is None
    )
    # Cross attention shape: queries and keys differ.
    if padding is None:
        assert (
            build_attention_mask(None, batch_size=3, query_length=2, key_length=7, causal=False)
            is None
        )


@pytest.mark.parametrize("padding", [None, torch.ones(3, 5, dtype=torch.bool)])
def test_causal_square_without_padding_is_none(padding: torch.Tensor | None) -> None:
    assert (
        build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=True)
        is None
    )


@pytest.mark.parametrize("padding", [None, torch.ones(3, 7, dtype=torch.long)])
def test_one_query_seeing_every_key_is_none(padding: torch.Tensor | None) -> None:
    assert (
        build_attention_mask(
            padding, batch_size=3, query_length=1, key_length=7, causal=True, past_length=6
        )
        is None
    )


def test_padding_makes_a_mask_even_when_non_causal() -> None:
    padding = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=False)
    assert mask is not None
    assert mask.dtype == torch.bool and mask.shape == (3, 1, 5, 5)
    assert torch.equal(mask, brute_force_mask(padding, 3, 5, 5, False, 0))


# ---------------------------------------------------------------------------------------------
# Padding mask handling and errors


def test_padding_mask_is_right_padded_for_static_cache() -> None:
    padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    mask = build_attention_mask(
        padding, batch_size=2, query_length=5, key_length=9, causal=False, past_length=0
    )
    assert mask is not None
    assert mask.shape == (2, 1, 5, 9)
    assert not mask[..., 5:].any()  # the four empty slots are hidden from every query
    assert mask[0, 0, :, :5].all()
    assert torch.equal(mask[1, 0, 0, :5], torch.tensor([False, False, True, True, True]))


def test_mask_longer_than_keys_raises() -> None:
    padding = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"covers 6 tokens.*only has 5 keys"):
        build_attention_mask(padding, batch_size=2, query_length=5, key_length=5, causal=True)


def test_batch_mismatch_raises() -> None:
    padding = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"batch size 2 .* 3"):
        build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=True)


def test_padding_mask_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2D"):
        build_attention_mask(
            torch.ones(2, 1, 5, dtype=torch.long),
            batch_size=2,
            query_length=5,
            key_length=5,
            causal=True,
        )


def test_prepared_4d_mask_is_returned_unchanged() -> None:
    prepared = torch.rand(2, 1, 3, 5) > 0.5
    out = build_attention_mask(
        prepared, batch_size=2, query_length=3, key_length=5, causal=True, past_length=2
    )
    assert out is prepared


# ---------------------------------------------------------------------------------------------
# Backend formats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_flex_attention_gets_additive_mask_even_without_padding(dtype: torch.dtype) -> None:
    mask = build_attention_mask(
        None,
        batch_size=2,
        query_length=4,
        key_length=4,
        causal=True,
        attn_implementation="flex_attention",
        dtype=dtype,
    )
    assert mask is not None
    assert mask.dtype == dtype
    assert mask.shape == (2, 1, 4, 4)
    lowest = torch.finfo(dtype).min
    for i in range(4):
        for j in range(4):
            assert float(mask[0, 0, i, j]) == (0.0 if j <= i else lowest)
    assert torch.isfinite(mask).all()


def test_flex_attention_with_padding_matches_boolean_pattern() -> None:
    padding = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    additive = build_attention_mask(
        padding,
        batch_size=2,
        query_length=4,
        key_length=4,
        causal=False,
        attn_implementation="flex_attention",
    )
    assert additive is not None and additive.dtype == torch.float32
    expected = brute_force_mask(padding, 2, 4, 4, False, 0)
    assert torch.equal(additive == 0, expected)
    assert torch.equal(
        additive[~expected], torch.full_like(additive[~expected], -3.4028234663852886e38)
    )
    # Nothing to hide and not causal: no mask at all.
    assert (
        build_attention_mask(
            None,
            batch_size=2,
            query_length=4,
            key_length=4,
            causal=False,
            attn_implementation="flex_attention",
        )
        is None
    )


@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention_gets_the_2d_padding_mask(causal: bool) -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = build_attention_mask(
        padding,
        batch_size=2,
        query_length=5,
        key_length=5,
        causal=causal,
        attn_implementation="flash_attention_2",
    )
    assert out is not None
    assert out.dim() == 2
    assert torch.equal(out.bool(), padding.bool())
    # Right-padded for a static cache of 7.
    out = build_attention_mask(
        padding,
        batch_size=2,
        query_length=5,
        key_length=7,
        causal=causal,
        attn_implementation="flash_attention_2",
    )
    assert out is not None
    assert torch.equal(
        out.bool(), torch.cat([padding.bool(), torch.zeros(2, 2, dtype=torch.bool)], 1)
    )
    # Nothing padded: nothing to un-pad.
    for nothing in (None, torch.ones(2, 5, dtype=torch.long)):
        assert (
            build_attention_mask(
                nothing,
                batch_size=2,
                query_length=5,
                key_length=5,
                causal=causal,
                attn_implementation="flash_attention_2",
            )
            is None
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_to_additive_mask_is_finite(dtype: torch.dtype) -> None:
    boolean = torch.tensor([[True, False, True], [False, False, False]])
    additive = to_additive_mask(boolean, dtype)
    assert additive.dtype == dtype
    assert torch.isfinite(additive).all()
    assert torch.equal(additive[boolean], torch.zeros(2, dtype=dtype))
    assert (additive[~boolean] == torch.finfo(dtype).min).all()
    # A fully hidden row stays finite through the softmax.
    scores = torch.randn(2, 3).to(dtype) * 100
    probabilities = torch.softmax((scores + additive).float(), dim=-1)
    assert torch.isfinite(probabilities).all()


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize(
    ("queries", "keys", "past"), [(4, 4, 0), (1, 6, 5), (3, 7, 2), (2, 9, 3), (5, 5, 0)]
)
def test_causal_mask_brute_force(queries: int, keys: int, past: int) -> None:
    mask = causal_mask(queries, keys, past)
    assert mask.shape == (queries, keys)
    expected = brute_force_mask(None, 1, queries, keys, True, past)[0, 0]
    assert torch.equal(mask, expected)
    assert torch.equal(causal_mask(queries, keys, torch.tensor(past)), expected)


def _fill(
    cache: DynamicCache | StaticCache, tokens: int, batch: int = 2, layer_idx: int = 0
) -> None:
    states = torch.randn(batch, 1, tokens, 4)
    cache.update(states, states, layer_idx)


def test_cache_lengths() -> None:
    assert cache_lengths(None, 5) == (0, 5)

    dynamic = DynamicCache()
    assert cache_lengths(dynamic, 5) == (0, 5)
    _fill(dynamic, 4)
    past, keys = cache_lengths(dynamic, 3)
    assert (int(past), keys) == (4, 7)
    # Another layer of the same cache has seen nothing yet.
    assert cache_lengths(dynamic, 3, layer_idx=1) == (0, 3)

    config = PreTrainedConfig(
        num_hidden_layers=1, num_attention_heads=1, hidden_size=4, num_key_value_heads=1, head_dim=4
    )
    static = StaticCache(config=config, max_cache_len=9)
    past, keys = cache_lengths(static, 4)
    assert (int(past), keys) == (0, 9)
    _fill(static, 4)
    past, keys = cache_lengths(static, 1)
    assert (int(past), keys) == (4, 9)
