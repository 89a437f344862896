"""The attention module and its two backends: the same numbers, the right masking, the
transformers ways of choosing a backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers import AttentionInterface, DynamicCache, PreTrainedConfig, PreTrainedModel

from scratchformers.core_attention import (
    Attention,
    RotaryEmbedding,
    attention_function,
    build_attention_mask,
    cache_lengths,
    eager_attention_forward,
    position_ids_from_padding_mask,
    repeat_kv,
    sdpa_attention_forward,
    to_additive_mask,
)

BACKENDS = ("eager", "sdpa")


def config_for(implementation: str | None) -> PreTrainedConfig:
    config = PreTrainedConfig()
    config._attn_implementation = implementation
    return config


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


@st.composite
def head_layouts(draw: st.DrawFn) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim): multi-head, grouped-query and multi-query."""
    heads = draw(st.sampled_from([1, 2, 3, 4, 6]))
    kv_heads = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    head_dim = draw(st.sampled_from([2, 4, 5, 8]))
    return heads, kv_heads, head_dim


def visible_rows(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(batch, heads, queries) True where a query sees at least one key."""
    return mask.expand(shape).any(-1)


# ---------------------------------------------------------------------------------------------
# eager == sdpa


@given(layout=head_layouts(), data=st.data())
def test_module_eager_equals_sdpa(layout: tuple[int, int, int], data: st.DataObject) -> None:
    heads, kv_heads, head_dim = layout
    batch = data.draw(st.integers(1, 3), label="batch")
    past = data.draw(st.integers(0, 4), label="past")
    queries = data.draw(st.integers(1, 5), label="queries")
    causal = data.draw(st.booleans(), label="causal")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))

    config = PreTrainedConfig()
    hidden = heads * head_dim
    attention = Attention(
        hidden, heads, kv_heads, config=config, is_causal=causal, layer_idx=0
    ).eval()
    x = torch.randn(batch, past + queries, hidden)

    results = {}
    for implementation in BACKENDS:
        config._attn_implementation = implementation
        cache = DynamicCache()
        outputs = []
        if past:
            prefix_padding = None if padding is None else padding[:, :past]
            mask = build_attention_mask(
                prefix_padding, batch_size=batch, query_length=past, key_length=past, causal=causal
            )
            outputs.append(attention(x[:, :past], mask, cache=cache)[0])
        past_length, key_length = cache_lengths(cache, queries)
        mask = build_attention_mask(
            padding,
            batch_size=batch,
            query_length=queries,
            key_length=key_length,
            causal=causal,
            past_length=past_length,
        )
        output, probabilities = attention(x[:, past:], mask, cache=cache)
        outputs.append(output)
        results[implementation] = torch.cat(outputs, dim=1)
        if implementation == "eager":
            assert probabilities is not None
            assert probabilities.shape == (batch, heads, queries, past + queries)
        else:
            assert probabilities is None

    assert torch.isfinite(results["eager"]).all()
    torch.testing.assert_close(results["eager"], results["sdpa"], atol=1e-5, rtol=1e-5)


@given(layout=head_layouts(), data=st.data())
def test_functions_eager_equals_sdpa(layout: tuple[int, int, int], data: st.DataObject) -> None:
    heads, kv_heads, head_dim = layout
    batch = data.draw(st.integers(1, 3), label="batch")
    past = data.draw(st.integers(0, 4), label="past")
    queries = data.draw(st.integers(1, 5), label="queries")
    empty = data.draw(st.integers(0, 2), label="empty StaticCache slots")
    causal = data.draw(st.booleans(), label="causal")
    padding = data.draw(padding_masks(batch, past + queries), label="padding")
    kind = data.draw(st.sampled_from(["built", "additive"]), label="mask kind")
    scaling = data.draw(st.none() | st.floats(0.05, 1.5), label="scaling")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    keys = past + queries + empty

    query = torch.randn(batch, heads, queries, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    module = SimpleNamespace(is_causal=causal)
    mask = build_attention_mask(
        padding,
        batch_size=batch,
        query_length=queries,
        key_length=keys,
        causal=causal,
        past_length=past,
    )
    if kind == "additive" and mask is not None:
        boolean, mask = mask, to_additive_mask(mask, torch.float32)
    else:
        boolean = mask

    eager, probabilities = eager_attention_forward(module, query, key, value, mask, scaling=scaling)
    sdpa, nothing = sdpa_attention_forward(module, query, key, value, mask, scaling=scaling)
    assert nothing is None
    assert eager.shape == sdpa.shape == (batch, queries, heads, head_dim)
    assert probabilities.shape == (batch, heads, queries, keys)
    assert torch.isfinite(eager).all() and torch.isfinite(sdpa).all()

    if kind == "additive" and boolean is not None:
        # An additive mask cannot zero a fully hidden row; compare the rows that see a key.
        seen = visible_rows(boolean, (batch, heads, queries, keys)).transpose(1, 2)
        torch.testing.assert_close(eager[seen], sdpa[seen], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)

    if boolean is not None:
        expanded = boolean.expand(batch, heads, queries, keys)
        seen = expanded.any(-1)
        torch.testing.assert_close(
            probabilities.sum(-1)[seen], torch.ones(int(seen.sum())), atol=1e-5, rtol=0
        )
        # Hidden keys get (numerically) nothing in rows that see some key; with an additive
        # mask a fully hidden row is spread evenly instead, so only the boolean mask zeroes it.
        assert (probabilities[~expanded & seen[..., None]] < 1e-30).all()
        if kind == "built":
            assert (probabilities[~expanded] == 0).all()
            assert (probabilities[~seen] == 0).all()
    else:
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(batch, heads, queries))


def test_bool_and_additive_masks_agree() -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=True)
    assert mask is not None
    additive = to_additive_mask(mask, torch.float32)
    query, key, value = torch.randn(3, 3, 5, 16), torch.randn(3, 1, 5, 16), torch.randn(3, 1, 5, 16)
    module = SimpleNamespace(is_causal=True)
    seen = mask.expand(3, 3, 5, 5).any(-1).transpose(1, 2)
    for function in (eager_attention_forward, sdpa_attention_forward):
        with_bool, _ = function(module, query, key, value, mask)
        with_float, _ = function(module, query, key, value, additive)
        torch.testing.assert_close(with_bool[seen], with_float[seen], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The math, written out


def manual_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loops over batch, head and query in float64. Key/value head ``h // groups`` serves query
    head ``h``. Returns output (batch, queries, heads, dim) and probabilities."""
    batch, heads, queries, dim = query.shape
    keys = key.shape[2]
    groups = heads // key.shape[1]
    output = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    probabilities = torch.zeros(batch, heads, queries, keys, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(queries):
                allowed = [j for j in range(keys) if bool(visible[b, 0, i, j])]
                if not allowed:
                    continue
                scores = [
                    float(query[b, h, i].double() @ key[b, h // groups, j].double()) * scaling
                    for j in allowed
                ]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for j, w in zip(allowed, weights, strict=True):
                    probabilities[b, h, i, j] = w / total
                    output[b, i, h] += (w / total) * value[b, h // groups, j].double()
    return output, probabilities


def test_eager_output_equals_manual_softmax() -> None:
    query = torch.randn(2, 3, 3, 4)
    key = torch.randn(2, 1, 5, 4)
    value = torch.randn(2, 1, 5, 4)
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = build_attention_mask(
        padding, batch_size=2, query_length=3, key_length=5, causal=True, past_length=2
    )
    assert mask is not None
    module = SimpleNamespace(is_causal=True)
    expected_output, expected_probabilities = manual_attention(query, key, value, mask, 0.7)

    output, probabilities = eager_attention_forward(module, query, key, value, mask, scaling=0.7)
    torch.testing.assert_close(output.double(), expected_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probabilities.double(), expected_probabilities, atol=1e-6, rtol=1e-5)
    sdpa, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.7)
    torch.testing.assert_close(sdpa.double(), expected_output, atol=1e-5, rtol=1e-5)
    # Default scaling is head_dim ** -0.5.
    default, _ = eager_attention_forward(module, query, key, value, mask)
    expected_default, _ = manual_attention(query, key, value, mask, 4**-0.5)
    torch.testing.assert_close(default.double(), expected_default, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_module_equals_manual_projections_and_heads(implementation: str) -> None:
    hidden, heads, kv_heads, dim = 48, 3, 1, 16
    attention = Attention(
        hidden, heads, kv_heads, config=config_for(implementation), is_causal=True
    ).eval()
    x = torch.randn(3, 5, hidden)
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=True)
    assert mask is not None

    def project(linear: nn.Linear, count: int) -> torch.Tensor:
        # (batch, seq, count * dim) -> (batch, count, seq, dim): head h owns channels h*dim..
        out = x @ linear.weight.T + linear.bias
        return torch.stack([out[..., h * dim : (h + 1) * dim] for h in range(count)], dim=1)

    with torch.no_grad():
        q = project(attention.q_proj, heads)
        k = project(attention.k_proj, kv_heads)
        v = project(attention.v_proj, kv_heads)
        heads_out, _ = manual_attention(q, k, v, mask, dim**-0.5)
        expected = heads_out.reshape(3, 5, heads * dim).float() @ attention.o_proj.weight.T
        expected = expected + attention.o_proj.bias
        output, _ = attention(x, mask)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Fully masked rows


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_fully_masked_rows_are_finite_zero_attention(
    implementation: str, dtype: torch.dtype, causal: bool
) -> None:
    attention = Attention(48, 3, 1, config=config_for(implementation), is_causal=causal)
    attention = attention.to(dtype).eval()
    x = torch.randn(3, 5, 48, dtype=dtype)
    # Row 0 left padded, row 1 entirely padding, row 2 complete.
    padding = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=causal)
    assert mask is not None
    with torch.no_grad():
        output, probabilities = attention(x, mask)
    assert torch.isfinite(output).all()

    blind = ~mask[:, 0].any(-1)  # (batch, queries): queries that see no key
    assert blind[1].all()
    assert blind[0, :2].all() == causal
    # A blind query attends to nothing: its output is o_proj of zeros, i.e. the bias.
    bias = attention.o_proj.bias.expand(int(blind.sum()), 48)
    torch.testing.assert_close(output[blind], bias, atol=0, rtol=0)
    if implementation == "eager":
        assert probabilities is not None
        assert torch.isfinite(probabilities).all()
        assert (probabilities.transpose(1, 2)[blind] == 0).all()
        sums = probabilities.float().sum(-1).transpose(1, 2)[~blind]
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-2, rtol=0)


@pytest.mark.parametrize("function", [eager_attention_forward, sdpa_attention_forward])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_functions_return_zeros(function: Callable, dtype: torch.dtype) -> None:
    query = torch.randn(2, 3, 4, 8, dtype=dtype)
    key = torch.randn(2, 3, 4, 8, dtype=dtype)
    value = torch.randn(2, 3, 4, 8, dtype=dtype)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False
    mask[1] = False
    output, _ = function(SimpleNamespace(is_causal=False), query, key, value, mask)
    assert torch.isfinite(output).all()
    assert (output[0, 1] == 0).all()
    assert (output[1] == 0).all()
    assert (output[0, 0].abs() > 0).any()
    # With an additive (finite) mask the blind rows stay finite too.
    output, _ = function(
        SimpleNamespace(is_causal=False), query, key, value, to_additive_mask(mask, dtype)
    )
    assert torch.isfinite(output).all()


# ---------------------------------------------------------------------------------------------
# Padding has no influence


@given(data=st.data())
def test_padded_positions_do_not_influence_real_ones(data: st.DataObject) -> None:
    causal = data.draw(st.booleans(), label="causal")
    rope = data.draw(st.booleans(), label="rope")
    kv_heads = data.draw(st.sampled_from([1, 3]), label="kv_heads")
    batch, length = 3, 7
    pads = data.draw(st.lists(st.integers(0, 6), min_size=batch, max_size=batch), label="pads")
    sides = data.draw(
        st.lists(st.sampled_from(["left", "right"]), min_size=batch, max_size=batch), label="sides"
    )
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    padding = torch.tensor(
        [
            [0] * p + [1] * (length - p) if side == "left" else [1] * (length - p) + [0] * p
            for p, side in zip(pads, sides, strict=True)
        ]
    )
    config = PreTrainedConfig()
    attention = Attention(48, 3, kv_heads, config=config, is_causal=causal).eval()
    x = torch.randn(batch, length, 48)
    changed = x.clone()
    changed[padding == 0] = torch.randn(int((padding == 0).sum()), 48) * 10
    mask = build_attention_mask(
        padding, batch_size=batch, query_length=length, key_length=length, causal=causal
    )
    position_embeddings = None
    if rope:
        position_ids = position_ids_from_padding_mask(padding, length)
        position_embeddings = RotaryEmbedding(16)(position_ids)
    real = padding.bool()
    for implementation in BACKENDS:
        config._attn_implementation = implementation
        with torch.no_grad():
            before, _ = attention(x, mask, position_embeddings=position_embeddings)
            after, _ = attention(changed, mask, position_embeddings=position_embeddings)
        torch.testing.assert_close(before[real], after[real], atol=1e-5, rtol=1e-5)


def test_without_the_mask_padding_would_leak() -> None:
    # Guards the test above: the same change is visible when the mask is left out.
    attention = Attention(48, 3, config=config_for("sdpa")).eval()
    x = torch.randn(1, 5, 48)
    changed = x.clone()
    changed[0, :2] = torch.randn(2, 48) * 10
    with torch.no_grad():
        before, _ = attention(x)
        after, _ = attention(changed)
    assert not torch.allclose(before[0, 2:], after[0, 2:], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Grouped-query attention


def test_repeat_kv_order() -> None:
    states = torch.randn(2, 3, 5, 4)
    repeated = repeat_kv(states, 4)
    assert repeated.shape == (2, 12, 5, 4)
    for head in range(12):
        assert torch.equal(repeated[:, head], states[:, head // 4])
    assert repeat_kv(states, 1) is states


@pytest.mark.parametrize("per_head", [False, True])
def test_one_query_grouped_by_key_value_head_matches_repeated_keys(per_head: bool) -> None:
    """Decoding one token with grouped-query attention and a mask, sdpa groups the query heads
    by their key/value head instead of copying the keys and values: the same output as
    attending with the keys and values repeated, for a mask shared by the heads or one each."""
    batch, heads, kv_heads, keys, head_dim = 3, 6, 2, 7, 5
    query = torch.randn(batch, heads, 1, head_dim)
    key = torch.randn(batch, kv_heads, keys, head_dim)
    value = torch.randn(batch, kv_heads, keys, head_dim)
    mask = torch.randn(batch, heads if per_head else 1, 1, keys)
    mask[0, ..., :3] = torch.finfo(torch.float32).min  # hidden keys
    module = SimpleNamespace(is_causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, 3), repeat_kv(value, 3), attn_mask=mask
    ).transpose(1, 2)
    copying = "scratchformers.core_attention.functional.repeat_kv"
    with mock.patch(copying, side_effect=AssertionError("keys and values were copied")):
        output, _ = sdpa_attention_forward(module, query, key, value, mask)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-6)
    eager, _ = eager_attention_forward(module, query, key, value, mask)
    torch.testing.assert_close(output, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_gqa_with_all_heads_is_mha(implementation: str) -> None:
    config = config_for(implementation)
    mha = Attention(48, 3, config=config, is_causal=True).eval()
    gqa = Attention(48, 3, 3, config=config, is_causal=True).eval()
    gqa.load_state_dict(mha.state_dict())
    assert gqa.num_key_value_groups == 1
    x = torch.randn(3, 7, 48)
    padding = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    mask = build_attention_mask(padding, batch_size=3, query_length=7, key_length=7, causal=True)
    with torch.no_grad():
        assert torch.equal(mha(x, mask)[0], gqa(x, mask)[0])
        assert torch.equal(mha(x)[0], gqa(x)[0])


def _expanded_to_mha(gqa: Attention) -> Attention:
    """An MHA layer whose k/v projections are the GQA ones, each kv head repeated for the
    consecutive query heads it serves."""
    groups, dim = gqa.num_key_value_groups, gqa.head_dim
    mha = Attention(
        gqa.hidden_size,
        gqa.num_attention_heads,
        config=gqa.config,
        is_causal=gqa.is_causal,
        head_dim=dim,
    ).eval()
    state = {}
    for name, tensor in gqa.state_dict().items():
        if name.startswith(("k_proj", "v_proj")):
            per_head = tensor.reshape(gqa.num_key_value_heads, dim, *tensor.shape[1:])
            tensor = per_head.repeat_interleave(groups, dim=0).reshape(-1, *tensor.shape[1:])
        state[name] = tensor
    mha.load_state_dict(state)
    return mha


@pytest.mark.parametrize("implementation", BACKENDS)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(6, 2, 8), (3, 1, 16), (6, 3, 8)])
def test_gqa_equals_mha_with_repeated_kv_weights(
    implementation: str, heads: int, kv_heads: int, head_dim: int
) -> None:
    config = config_for(implementation)
    gqa = Attention(48, heads, kv_heads, config=config, is_causal=True).eval()
    mha = _expanded_to_mha(gqa)
    x = torch.randn(3, 7, 48)
    padding = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    mask = build_attention_mask(padding, batch_size=3, query_length=7, key_length=7, causal=True)
    rotary = RotaryEmbedding(head_dim)(position_ids_from_padding_mask(padding, 7))
    with torch.no_grad():
        for m, pos in ((mask, None), (None, None), (mask, rotary)):
            out_gqa, probs_gqa = gqa(x, m, position_embeddings=pos)
            out_mha, probs_mha = mha(x, m, position_embeddings=pos)
            torch.testing.assert_close(out_gqa, out_mha, atol=1e-5, rtol=1e-5)
            if implementation == "eager":
                torch.testing.assert_close(probs_gqa, probs_mha, atol=1e-6, rtol=1e-5)


def test_gqa_kv_heads_are_not_interchangeable() -> None:
    # Guards the test above: repeating the kv heads in the other order (tile) gives other numbers.
    gqa = Attention(48, 6, 2, config=config_for("eager")).eval()
    wrong = Attention(48, 6, config=gqa.config).eval()
    state = {}
    for name, tensor in gqa.state_dict().items():
        if name.startswith(("k_proj", "v_proj")):
            per_head = tensor.reshape(2, 8, *tensor.shape[1:])
            tensor = per_head.repeat(3, *([1] * (per_head.dim() - 1))).reshape(
                -1, *tensor.shape[1:]
            )
        state[name] = tensor
    wrong.load_state_dict(state)
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        assert not torch.allclose(gqa(x)[0], wrong(x)[0], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Constructor, biases, scaling, dropout


def test_constructor_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"hidden_size=50 .*num_attention_heads=3"):
        Attention(50, 3)
    with pytest.raises(ValueError, match=r"num_key_value_heads=2 .*num_attention_heads=3"):
        Attention(48, 3, 2)
    with pytest.raises(ValueError, match="causal"):
        Attention(48, 3, is_causal=True, is_cross_attention=True)
    with pytest.raises(ValueError, match="dropout"):
        Attention(48, 3, dropout=1.0)
    # An explicit head_dim lifts the divisibility requirement.
    attention = Attention(50, 3, head_dim=16)
    assert attention.q_proj.weight.shape == (48, 50)
    assert attention.o_proj.weight.shape == (50, 48)


def test_projection_shapes_and_bias_flags() -> None:
    attention = Attention(48, 3, 1, is_cross_attention=True, key_value_size=20)
    assert attention.q_proj.weight.shape == (48, 48)
    assert attention.k_proj.weight.shape == (16, 20)
    assert attention.v_proj.weight.shape == (16, 20)
    assert attention.o_proj.weight.shape == (48, 48)
    assert all(
        getattr(attention, name).bias is not None
        for name in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    flags = {"q_bias": False, "k_bias": True, "v_bias": False, "o_bias": True}
    attention = Attention(48, 3, **flags)
    for name, flag in flags.items():
        linear = getattr(attention, f"{name[0]}_proj")
        assert (linear.bias is not None) == flag
    no_bias = Attention(48, 3, q_bias=False, k_bias=False, v_bias=False, o_bias=False)
    assert sorted(no_bias.state_dict()) == [
        "k_proj.weight",
        "o_proj.weight",
        "q_proj.weight",
        "v_proj.weight",
    ]


@pytest.mark.parametrize("implementation", BACKENDS)
def test_scaling_zero_is_uniform_attention(implementation: str) -> None:
    attention = Attention(48, 3, 1, config=config_for(implementation), scaling=0.0).eval()
    assert attention.scaling == 0.0
    x = torch.randn(3, 5, 48)
    padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=5, causal=False)
    with torch.no_grad():
        output, probabilities = attention(x, mask)
        values = attention.v_proj(x)  # (batch, keys, 16): one kv head shared by all heads
        expected = []
        for b in range(3):
            real = padding[b].bool()
            mean = values[b, real].mean(0)
            expected.append(attention.o_proj(mean.repeat(3)).expand(5, 48))
    torch.testing.assert_close(output, torch.stack(expected), atol=1e-5, rtol=1e-5)
    if implementation == "eager":
        assert probabilities is not None
        torch.testing.assert_close(probabilities[1, :, :, 2:], torch.full((3, 5, 3), 1 / 3))


def test_scaling_argument_is_used() -> None:
    default = Attention(48, 3, config=config_for("eager")).eval()
    assert default.scaling == pytest.approx(16**-0.5)
    explicit = Attention(48, 3, config=default.config, scaling=16**-0.5).eval()
    doubled = Attention(48, 3, config=default.config, scaling=2 * 16**-0.5).eval()
    explicit.load_state_dict(default.state_dict())
    doubled.load_state_dict(default.state_dict())
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        assert torch.equal(default(x)[0], explicit(x)[0])
        _, p_default = default(x)
        _, p_doubled = doubled(x)
        # Doubling the scale squares the (unnormalised) weights: p2 = p^2 / sum(p^2).
        squared = p_default**2
        torch.testing.assert_close(p_doubled, squared / squared.sum(-1, keepdim=True))


def test_dropout_only_in_training_eager() -> None:
    config = config_for("eager")
    attention = Attention(48, 3, config=config, dropout=0.5)
    reference = Attention(48, 3, config=config)
    reference.load_state_dict(attention.state_dict())
    x = torch.randn(3, 7, 48)
    attention.eval()
    with torch.no_grad():
        out_eval, p_eval = attention(x)
        assert torch.equal(out_eval, attention(x)[0])
        assert torch.equal(out_eval, reference(x)[0])
        attention.train()
        out_train, p_train = attention(x)
    assert not torch.allclose(out_train, out_eval, atol=1e-4)
    dropped = p_train == 0
    assert dropped.any() and (~dropped).any()
    # Kept probabilities are scaled by 1 / (1 - p).
    torch.testing.assert_close(p_train[~dropped], 2 * p_eval[~dropped])


def test_dropout_only_in_training_sdpa() -> None:
    attention = Attention(48, 3, config=config_for("sdpa"), dropout=0.5)
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        attention.eval()
        first, second = attention(x)[0], attention(x)[0]
        attention.train()
        trained = attention(x)[0]
    assert torch.equal(first, second)
    assert not torch.allclose(trained, first, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Probabilities, cross attention shapes


def test_probabilities_shape_and_output_attentions_kwarg() -> None:
    attention = Attention(
        48, 3, 1, config=config_for("eager"), is_cross_attention=True, key_value_size=20
    ).eval()
    queries, encoder = torch.randn(3, 5, 48), torch.randn(3, 7, 20)
    padding = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    mask = build_attention_mask(padding, batch_size=3, query_length=5, key_length=7, causal=False)
    with torch.no_grad():
        output, probabilities = attention(
            queries, mask, key_value_states=encoder, output_attentions=True
        )
    assert output.shape == (3, 5, 48)
    assert probabilities is not None
    assert probabilities.shape == (3, 3, 5, 7)
    assert (probabilities[1, :, :, 4:] == 0).all()
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, 3, 5))
    attention.config._attn_implementation = "sdpa"
    with torch.no_grad():
        sdpa_output, nothing = attention(queries, mask, key_value_states=encoder)
    assert nothing is None
    torch.testing.assert_close(sdpa_output, output, atol=1e-5, rtol=1e-5)


def test_cross_attention_needs_encoder_states_and_self_attention_cache_needs_layer_idx() -> None:
    cross = Attention(48, 3, is_cross_attention=True)
    with pytest.raises(ValueError, match="key_value_states"):
        cross(torch.randn(1, 2, 48))
    attention = Attention(48, 3, is_causal=True)
    with pytest.raises(ValueError, match="layer_idx"):
        attention(torch.randn(1, 2, 48), cache=DynamicCache())


# ---------------------------------------------------------------------------------------------
# Choosing a backend


def test_attention_function_returns_ours() -> None:
    assert attention_function("sdpa") is sdpa_attention_forward
    assert attention_function("eager") is eager_attention_forward
    assert attention_function(None) is sdpa_attention_forward
    assert Attention(48, 3).attn_implementation == "sdpa"
    assert Attention(48, 3, config=PreTrainedConfig()).attn_implementation == "sdpa"
    assert Attention(48, 3, config=config_for("eager")).attn_implementation == "eager"


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'no-such-attention'.*'eager'.*'sdpa'"):
        attention_function("no-such-attention")
    attention = Attention(48, 3, config=config_for("no-such-attention"))
    with pytest.raises(ValueError, match="AttentionInterface"):
        attention(torch.randn(1, 2, 48))


@pytest.fixture
def registered_attention() -> Iterator[list[dict]]:
    calls: list[dict] = []

    def my_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(
            {"module": module, "query": query, "key": key, "mask": attention_mask, **kwargs}
        )
        output = torch.full_like(query.transpose(1, 2), 0.25)
        return output, "my probabilities"

    AttentionInterface.register("my_attention", my_attention)
    try:
        yield calls
    finally:
        AttentionInterface._global_mapping.pop("my_attention", None)


def test_registered_attention_is_called(registered_attention: list[dict]) -> None:
    config = config_for("my_attention")
    attention = Attention(48, 3, 1, config=config, is_causal=True, scaling=0.3).eval()
    x = torch.randn(2, 5, 48)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    with torch.no_grad():
        output, probabilities = attention(x, mask)
    assert len(registered_attention) == 1
    call = registered_attention[0]
    assert call["module"] is attention
    assert call["query"].shape == (2, 3, 5, 16)
    assert call["key"].shape == (2, 1, 5, 16)
    assert call["mask"] is mask
    assert call["scaling"] == 0.3
    assert call["dropout"] == 0.0
    assert probabilities == "my probabilities"
    expected = attention.o_proj(torch.full((2, 5, 48), 0.25))
    torch.testing.assert_close(output, expected)


class TinyAttentionConfig(PreTrainedConfig):
    model_type = "core-attention-test"
    hidden_size: int = 48
    num_attention_heads: int = 3
    num_key_value_heads: int = 1


class TinyAttentionModel(PreTrainedModel):
    config_class = TinyAttentionConfig
    base_model_prefix = "tiny"
    _supports_sdpa = True
    _supports_flex_attn = True

    def __init__(self, config: TinyAttentionConfig) -> None:
        super().__init__(config)
        self.attention = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config=config,
            is_causal=True,
        )
        self.post_init()

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attention(hidden_states, attention_mask)


def test_from_pretrained_attn_implementation_and_switching(tmp_path: Path) -> None:
    model = TinyAttentionModel(TinyAttentionConfig()).eval()
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        expected, nothing = model(x)
    assert nothing is None
    model.save_pretrained(tmp_path)

    loaded = TinyAttentionModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config._attn_implementation == "eager"
    assert loaded.attention.attn_implementation == "eager"
    with torch.no_grad():
        output, probabilities = loaded(x)
    assert probabilities is not None
    assert probabilities.shape == (3, 3, 5, 5)
    assert (probabilities.triu(1) == 0).all()  # causal
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)

    loaded.set_attn_implementation("sdpa")
    assert loaded.attention.attn_implementation == "sdpa"
    with torch.no_grad():
        output, probabilities = loaded(x)
    assert probabilities is None
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
