"""Position information: learned, sinusoidal and rotary, all driven by ``position_ids``.

Every scheme here takes explicit ``position_ids`` rather than assuming ``0, 1, 2, ...``. That
is what makes left padding and cached decoding right: a left-padded prompt starts counting at
its first real token, and a token decoded after ``n`` cached ones sits at position ``n``.
"""

from __future__ import annotations

import torch
from torch import nn


def position_ids_from_padding_mask(
    padding_mask: torch.Tensor | None,
    query_length: int,
    past_length: int | torch.Tensor = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Positions of the ``query_length`` newest tokens, shape ``(batch or 1, query_length)``.

    With a padding mask (1 = token, 0 = padding, covering cached and new tokens) each row counts
    its real tokens only, so left padding does not shift positions; padding positions get 0
    (any valid index would do: nothing attends to them). This is the rule ``generate()`` uses,
    so a plain forward and a generation step agree. Without a mask, positions simply continue
    after the ``past_length`` cached tokens.
    """
    if padding_mask is None:
        positions = torch.arange(query_length, device=device) + past_length
        return positions.unsqueeze(0)
    padding_mask = padding_mask.long()
    positions = padding_mask.cumsum(-1) - 1
    positions = positions.masked_fill(padding_mask == 0, 0)
    return positions[:, -query_length:]


class LearnedPositionalEmbedding(nn.Embedding):
    """One trained vector per position (GPT-2, BERT, ViT's patch positions, BART).

    ``offset`` reserves that many rows before position 0: BART's and MBART's tables hold
    ``max_position_embeddings + 2`` rows and look position ``p`` up at row ``p + 2`` (a
    leftover of fairseq, which numbered positions after the padding index). Keeping the offset
    here lets such checkpoints load unchanged.

    Unlike a bare ``nn.Embedding``, a position past the table raises an error that names the
    limit, instead of an opaque index error (or a device-side assert on a GPU).
    """

    def __init__(self, num_positions: int, embedding_dim: int, offset: int = 0) -> None:
        super().__init__(num_positions + offset, embedding_dim)
        self.offset = offset

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        limit = self.num_embeddings - self.offset
        if not torch.compiler.is_compiling() and position_ids.numel() > 0:
            largest = int(position_ids.max())
            if largest >= limit:
                raise ValueError(
                    f"position {largest} is out of range: this model has max_position_embeddings="
                    f"{limit}, so sequences (prompt plus generated tokens) must be at "
                    f"most {limit} tokens long"
                )
        return super().forward(position_ids + self.offset if self.offset else position_ids)


def sinusoidal_position_embedding(
    position_ids: torch.Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed sine/cosine positions from "Attention Is All You Need", shape ``(*position_ids.shape, dim)``.

    Layout: all sines first, then all cosines (the tensor2tensor / fairseq / Marian layout,
    a permutation of the paper's interleaving). Frequency ``i`` is ``base ** (-2i / dim)``;
    for odd ``dim`` the sines get one more channel.
    """
    num_sin = (dim + 1) // 2
    exponents = torch.arange(num_sin, device=position_ids.device, dtype=torch.float32) * 2 / dim
    frequencies = base**-exponents
    angles = position_ids.to(torch.float32)[..., None] * frequencies
    embedding = torch.cat([angles.sin(), angles[..., : dim // 2].cos()], dim=-1)
    return embedding.to(dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """Module wrapper of :func:`sinusoidal_position_embedding`; it holds no weights, so nothing
    about it is saved in a checkpoint and any position works."""

    def __init__(self, embedding_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.base = base

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        return sinusoidal_position_embedding(position_ids, self.embedding_dim, self.base, dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE), the rotate-half convention.

    Convention (GPT-NeoX, Llama and transformers): the rotated channels of a head are split in
    two halves ``x1, x2``; channel ``j`` of the first half and channel ``j`` of the second form
    one pair, rotated by angle ``position * base ** (-2j / rotary_dim)``. Only the first
    ``rotary_dim`` channels of each head are rotated (partial rotary, as GPT-NeoX); the rest
    pass through. Because ``q_m . k_n`` then depends on ``m - n`` only, attention scores
    depend on relative distance while positions stay absolute indices.

    ``forward`` returns ``(cos, sin)`` of shape ``(batch, seq, rotary_dim)``, computed once per
    model forward and handed to every attention layer as ``position_embeddings``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, rotary_dim: int | None = None) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ValueError(
                f"rotary_dim must be even and between 2 and head_dim={head_dim}, got {rotary_dim}"
            )
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base

    def inverse_frequencies(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``base ** (-2j / rotary_dim)`` for each channel pair ``j``.

        Recomputed at each call rather than kept in a buffer: it is a handful of numbers, and
        without a buffer there is nothing to go stale when a model is built on the meta device
        or moved between devices and dtypes.
        """
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=device)
        return self.base ** -(exponents / self.rotary_dim)

    @torch.no_grad()
    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        # Angles in float32 whatever the model dtype: bf16 positions lose whole integers past 256.
        inverse_frequencies = self.inverse_frequencies(position_ids.device)
        angles = position_ids.to(torch.float32)[..., None] * inverse_frequencies
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension: a quarter turn of every channel pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``query`` and ``key`` (``(batch, heads, seq, head_dim)``) by the angles of their
    positions. ``cos``/``sin`` come from :class:`RotaryEmbedding`; when they are narrower than
    the head, only the leading channels are rotated."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        if rotary_dim == x.shape[-1]:
            return x * cos + rotate_half(x) * sin
        rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
        return torch.cat([rotated * cos + rotate_half(rotated) * sin, passed], dim=-1)

    return rotate(query), rotate(key)
