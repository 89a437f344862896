"""scratchformers.core_attention: the attention, mask, position and KV-cache core shared by
every scratchformers model."""

from .activations import activation
from .attention import Attention
from .decoding import LeanGenerationMixin, compile_options, lean_sample
from .functional import (
    attention_function,
    eager_attention_forward,
    repeat_kv,
    sdpa_attention_forward,
)
from .inputs import (
    TokenEmbedding,
    check_config,
    cross_attention_mask,
    prepare_attention_inputs,
)
from .interop import (
    CheckpointConverter,
    checkpoint_dir,
    export_checkpoint,
    from_pretrained_or_convert,
    is_transformers_checkpoint,
    load_transformers_checkpoint,
    read_config,
    read_safetensors,
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
    "CheckpointConverter",
    "LeanGenerationMixin",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEmbedding",
    "TokenEmbedding",
    "activation",
    "apply_rotary",
    "attention_function",
    "build_attention_mask",
    "cache_lengths",
    "causal_mask",
    "check_config",
    "checkpoint_dir",
    "compile_options",
    "create_masks_for_generate",
    "cross_attention_mask",
    "eager_attention_forward",
    "export_checkpoint",
    "from_pretrained_or_convert",
    "is_transformers_checkpoint",
    "lean_sample",
    "load_transformers_checkpoint",
    "position_ids_from_padding_mask",
    "prepare_attention_inputs",
    "read_config",
    "read_safetensors",
    "repeat_kv",
    "rotate_half",
    "sdpa_attention_forward",
    "sinusoidal_position_embedding",
    "to_additive_mask",
]
