"""scratchformers.core_attention: the attention, mask, position and KV-cache core shared by
every scratchformers model."""

from .activations import activation
from .attention import Attention
from .decoding import LeanGenerationMixin, compile_options, lean_sample
from .files import check_safetensors, check_weight_files, safetensors_problem
from .functional import (
    attention_function,
    eager_attention_forward,
    repeat_kv,
    sdpa_attention_forward,
)
from .hub import FOLDER_PLACEHOLDER, CarriesModelCard, forget_card_source, hub_card
from .inputs import (
    TokenEmbedding,
    check_classification_labels,
    check_config,
    check_labels,
    check_token_labels,
    classification_problem_type,
    cross_attention_mask,
    prepare_attention_inputs,
)
from .interop import (
    CheckpointConverter,
    ConvertsCheckpoints,
    conversion_key,
    export_to_transformers,
    from_pretrained_or_convert,
)
from .layout import InputMajorLinears, is_input_major, lay_out_linears, packed_query_key_value
from .loading import ChecksCheckpoints, load_checked
from .masks import (
    build_attention_mask,
    cache_lengths,
    causal_mask,
    check_mask_values,
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
from .quantize import Int8WeightOnlyLinear, quantize_int8

__all__ = [
    "FOLDER_PLACEHOLDER",
    "Attention",
    "CarriesModelCard",
    "CheckpointConverter",
    "ChecksCheckpoints",
    "ConvertsCheckpoints",
    "InputMajorLinears",
    "Int8WeightOnlyLinear",
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
    "check_classification_labels",
    "check_config",
    "check_labels",
    "check_mask_values",
    "check_safetensors",
    "check_token_labels",
    "check_weight_files",
    "classification_problem_type",
    "compile_options",
    "conversion_key",
    "create_masks_for_generate",
    "cross_attention_mask",
    "eager_attention_forward",
    "export_to_transformers",
    "forget_card_source",
    "from_pretrained_or_convert",
    "hub_card",
    "is_input_major",
    "lay_out_linears",
    "lean_sample",
    "load_checked",
    "packed_query_key_value",
    "position_ids_from_padding_mask",
    "prepare_attention_inputs",
    "quantize_int8",
    "repeat_kv",
    "rotate_half",
    "safetensors_problem",
    "sdpa_attention_forward",
    "sinusoidal_position_embedding",
    "to_additive_mask",
]
