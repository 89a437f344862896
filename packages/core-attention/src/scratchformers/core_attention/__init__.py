"""scratchformers.core_attention: the attention, mask, position and KV-cache core shared by
every scratchformers model."""

from .attention import Attention
from .functional import (
    attention_function,
    eager_attention_forward,
    repeat_kv,
    sdpa_attention_forward,
)
from .masks import (
    build_attention_mask,
    cache_lengths,
    causal_mask,
    create_masks_for_generate,
    to_additive_mask,
)
from .positions import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    apply_rotary,
    position_ids_from_padding_mask,
    rotate_half,
    sinusoidal_position_embedding,
)

__all__ = [
    "Attention",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEmbedding",
    "apply_rotary",
    "attention_function",
    "build_attention_mask",
    "cache_lengths",
    "causal_mask",
    "create_masks_for_generate",
    "eager_attention_forward",
    "position_ids_from_padding_mask",
    "repeat_kv",
    "rotate_half",
    "sdpa_attention_forward",
    "sinusoidal_position_embedding",
    "to_additive_mask",
]
