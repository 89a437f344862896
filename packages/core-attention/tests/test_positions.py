"""Positions: ids from padding, learned, sinusoidal and rotary embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scratchformers.core_attention import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    apply_rotary,
    position_ids_from_padding_mask,
    rotate_half,
    sinusoidal_position_embedding,
)

# ---------------------------------------------------------------------------------------------
# position_ids_from_padding_mask


def test_position_ids_left_padding() -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    positions = position_ids_from_padding_mask(padding, query_length=5)
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(positions, expected)


def test_position_ids_with_past_take_the_newest_tokens() -> None:
    # Two tokens cached already; the mask spans cached and new tokens.
    padding = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    positions = position_ids_from_padding_mask(padding, query_length=4, past_length=2)
    expected = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [1, 2, 3, 4]])
    assert torch.equal(positions, expected)
    one = position_ids_from_padding_mask(padding, query_length=1, past_length=5)
    assert torch.equal(one, torch.tensor([[3], [5], [4]]))


def test_position_ids_without_mask_continue_after_past() -> None:
    assert torch.equal(position_ids_from_padding_mask(None, 3), torch.tensor([[0, 1, 2]]))
    assert torch.equal(
        position_ids_from_padding_mask(None, 3, past_length=4), torch.tensor([[4, 5, 6]])
    )
    assert torch.equal(
        position_ids_from_padding_mask(None, 2, past_length=torch.tensor(7)), torch.tensor([[7, 8]])
    )


@given(
    rows=st.lists(
        st.tuples(st.integers(0, 7), st.sampled_from(["left", "right"])),
        min_size=1,
        max_size=3,
    ),
    query_length=st.integers(1, 7),
)
def test_position_ids_count_real_tokens_before(
    rows: list[tuple[int, str]], query_length: int
) -> None:
    length = 7
    mask_rows = []
    for pads, side in rows:
        real = length - pads
        mask_rows.append([0] * pads + [1] * real if side == "left" else [1] * real + [0] * pads)
    padding = torch.tensor(mask_rows)
    positions = position_ids_from_padding_mask(
        padding, query_length, past_length=length - query_length
    )
    assert positions.shape == (len(rows), query_length)
    for b, row in enumerate(mask_rows):
        for offset in range(query_length):
            t = length - query_length + offset
            if row[t]:
                assert int(positions[b, offset]) == sum(row[:t])
            else:
                assert int(positions[b, offset]) == 0


# ---------------------------------------------------------------------------------------------
# Learned


def test_learned_positions_look_up_rows() -> None:
    embedding = LearnedPositionalEmbedding(8, 4)
    ids = torch.tensor([[0, 3, 7], [1, 1, 2]])
    out = embedding(ids)
    assert torch.equal(out, embedding.weight[ids])


def test_learned_positions_too_large_raise_naming_the_limit() -> None:
    embedding = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match=r"position 8 .*max_position_embeddings=8"):
        embedding(torch.tensor([[5, 6, 7, 8]]))
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        embedding(torch.tensor([[30]]))


# ---------------------------------------------------------------------------------------------
# Sinusoidal


def test_sinusoidal_small_case_by_hand() -> None:
    # dim 4: frequencies 10000 ** (-0/4) = 1 and 10000 ** (-2/4) = 0.01.
    out = sinusoidal_position_embedding(torch.tensor([0, 1, 2]), 4)
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
            [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)],
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # The same numbers written out, for position 1.
    torch.testing.assert_close(
        out[1], torch.tensor([0.8414710, 0.0099998, 0.5403023, 0.9999500]), atol=1e-6, rtol=0
    )


def test_sinusoidal_odd_dim_by_hand() -> None:
    # dim 5: three sines, two cosines; frequency i is 10000 ** (-2i / 5).
    positions = torch.tensor([0, 1, 3, 11])
    out = sinusoidal_position_embedding(positions, 5)
    assert out.shape == (4, 5)
    f = [10000 ** (-2 * i / 5) for i in range(3)]
    for row, p in enumerate(positions.tolist()):
        expected = [
            math.sin(p * f[0]),
            math.sin(p * f[1]),
            math.sin(p * f[2]),
            math.cos(p * f[0]),
            math.cos(p * f[1]),
        ]
        torch.testing.assert_close(out[row], torch.tensor(expected), atol=1e-6, rtol=0)


def test_sinusoidal_shape_dtype_base_and_module() -> None:
    ids = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = sinusoidal_position_embedding(ids, 6, base=100.0, dtype=torch.bfloat16)
    assert out.shape == (2, 3, 6)
    assert out.dtype == torch.bfloat16
    f = [100 ** (-2 * i / 6) for i in range(3)]
    p = 6
    expected = [math.sin(p * x) for x in f] + [math.cos(p * x) for x in f]
    torch.testing.assert_close(out[1, 1].float(), torch.tensor(expected), atol=1e-2, rtol=0)

    module = SinusoidalPositionalEmbedding(6, base=100.0)
    assert len(module.state_dict()) == 0
    assert torch.equal(module(ids), sinusoidal_position_embedding(ids, 6, base=100.0))
    # Left padding shifts nothing: the same position id gives the same vector in any row.
    assert torch.equal(
        module(torch.tensor([[0, 0, 0, 1]]))[0, 3], module(torch.tensor([[1]]))[0, 0]
    )


# ---------------------------------------------------------------------------------------------
# Rotary


@pytest.mark.parametrize("rotary_dim", [3, 7, 0, 18])
def test_rotary_rejects_bad_rotary_dim(rotary_dim: int) -> None:
    with pytest.raises(ValueError, match="rotary_dim"):
        RotaryEmbedding(16, rotary_dim=rotary_dim)


def test_rotary_cos_sin_values() -> None:
    rotary = RotaryEmbedding(8, base=100.0)
    cos, sin = rotary(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert cos.shape == sin.shape == (2, 3, 8)
    inv_freq = [100 ** (-2 * j / 8) for j in range(4)]
    for b, row in enumerate([[0, 1, 2], [3, 4, 5]]):
        for s, p in enumerate(row):
            angles = [p * f for f in inv_freq] * 2
            torch.testing.assert_close(cos[b, s], torch.tensor([math.cos(a) for a in angles]))
            torch.testing.assert_close(sin[b, s], torch.tensor([math.sin(a) for a in angles]))
    # 1D ids get a batch dimension; inv_freq is not saved.
    cos1, _ = rotary(torch.tensor([0, 1, 2]))
    assert cos1.shape == (1, 3, 8)
    assert "inv_freq" not in rotary.state_dict()


def test_rotary_angles_are_float32_whatever_the_dtype() -> None:
    # 257 is not a bfloat16 number: computing the angle in bf16 would rotate by 256 or 258.
    rotary = RotaryEmbedding(4)
    cos, sin = rotary(torch.tensor([[257]]), dtype=torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16
    angles = torch.tensor([257.0, 257.0 * 0.01, 257.0, 257.0 * 0.01], dtype=torch.float64)
    assert torch.equal(cos[0, 0], angles.cos().to(torch.bfloat16))
    assert torch.equal(sin[0, 0], angles.sin().to(torch.bfloat16))


def test_rotate_half() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


def test_apply_rotary_pairs_channel_j_with_j_plus_half() -> None:
    head_dim = 6
    rotary = RotaryEmbedding(head_dim, base=50.0)
    q = torch.randn(1, 2, 1, head_dim)
    k = torch.randn(1, 2, 1, head_dim)
    position = 5
    q_rot, k_rot = apply_rotary(q, k, *rotary(torch.tensor([[position]])))
    half = head_dim // 2
    for x, x_rot in ((q, q_rot), (k, k_rot)):
        for j in range(half):
            angle = position * 50.0 ** (-2 * j / head_dim)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., j], x[..., j + half]
            torch.testing.assert_close(x_rot[..., j], a * c - b * s)
            torch.testing.assert_close(x_rot[..., j + half], b * c + a * s)


def test_position_zero_is_identity_and_norm_is_kept() -> None:
    rotary = RotaryEmbedding(8)
    q = torch.randn(2, 3, 4, 8)
    k = torch.randn(2, 3, 4, 8)
    q0, k0 = apply_rotary(q, k, *rotary(torch.zeros(2, 4, dtype=torch.long)))
    assert torch.equal(q0, q) and torch.equal(k0, k)
    ids = torch.tensor([[3, 9, 27, 40], [1, 2, 100, 7]])
    q_rot, k_rot = apply_rotary(q, k, *rotary(ids))
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(k_rot.norm(dim=-1), k.norm(dim=-1))
    assert not torch.allclose(q_rot, q)


def _score(
    rotary: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, m: int, n: int
) -> torch.Tensor:
    """q at position m, k at position n, one head: the attention score q_m . k_n."""
    cos_q, sin_q = rotary(torch.tensor([[m]]))
    cos_k, sin_k = rotary(torch.tensor([[n]]))
    q_rot, _ = apply_rotary(q, q, cos_q, sin_q)
    _, k_rot = apply_rotary(k, k, cos_k, sin_k)
    return (q_rot * k_rot).sum(-1)


@given(
    m=st.integers(0, 60),
    n=st.integers(0, 60),
    shift=st.integers(1, 60),
    rotary_dim=st.sampled_from([2, 4, 8, 10]),
    seed=st.integers(0, 2**16),
)
def test_rotary_scores_depend_only_on_distance(
    m: int, n: int, shift: int, rotary_dim: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    head_dim = 10
    rotary = RotaryEmbedding(head_dim, rotary_dim=rotary_dim)
    q = torch.randn(1, 1, 1, head_dim, generator=generator)
    k = torch.randn(1, 1, 1, head_dim, generator=generator)
    torch.testing.assert_close(
        _score(rotary, q, k, m, n), _score(rotary, q, k, m + shift, n + shift), atol=1e-4, rtol=1e-4
    )


def test_rotary_scores_do_change_with_distance() -> None:
    # Guards the test above against a rotation that does nothing.
    rotary = RotaryEmbedding(8)
    q = torch.randn(1, 1, 1, 8)
    k = torch.randn(1, 1, 1, 8)
    assert not torch.allclose(_score(rotary, q, k, 3, 0), _score(rotary, q, k, 0, 0), atol=1e-3)


def test_partial_rotary_leaves_tail_untouched() -> None:
    head_dim, rotary_dim = 10, 4
    partial = RotaryEmbedding(head_dim, base=100.0, rotary_dim=rotary_dim)
    full_on_head = RotaryEmbedding(rotary_dim, base=100.0)
    ids = torch.tensor([[0, 2, 5], [7, 1, 3]])
    cos, sin = partial(ids)
    assert cos.shape == (2, 3, rotary_dim)
    # The frequencies follow rotary_dim, not head_dim.
    torch.testing.assert_close(cos, full_on_head(ids)[0])
    q = torch.randn(2, 3, 3, head_dim)
    k = torch.randn(2, 1, 3, head_dim)
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    assert torch.equal(q_rot[..., rotary_dim:], q[..., rotary_dim:])
    assert torch.equal(k_rot[..., rotary_dim:], k[..., rotary_dim:])
    q_head, k_head = apply_rotary(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
    torch.testing.assert_close(q_rot[..., :rotary_dim], q_head)
    torch.testing.assert_close(k_rot[..., :rotary_dim], k_head)
    assert not torch.allclose(q_rot[..., :rotary_dim], q[..., :rotary_dim])
