"""BasicFormer configured as a Llama: the config and the weight names of transformers' Llama.

A Llama is a BasicFormer decoder with rotary positions (``rope_theta``), pre-norm RMSNorm, a
gated SiLU MLP (``gate_proj``/``up_proj``/``down_proj``), grouped-query attention and no
biases. The two functions here translate ``LlamaForCausalLM``'s config and state dict::

    from scratchformers.basicformer import BasicFormerForCausalLM
    from scratchformers.basicformer.llama import basicformer_state_from_llama, config_from_llama

    ours = BasicFormerForCausalLM(config_from_llama(llama.config))
    ours.load_state_dict(basicformer_state_from_llama(llama.state_dict()))

Only Llama's default rotary is supported (no ``rope_scaling`` such as Llama 3's ``"llama3"``).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from .configuration import BasicFormerConfig

# Llama's name -> ours. Attention (q/k/v/o_proj) and MLP (gate/up/down_proj) names are the same.
_PREFIXES = {
    "model.embed_tokens.": "model.decoder.embed_tokens.",
    "model.layers.": "model.decoder.layers.",
    "model.norm.": "model.decoder.final_norm.",
}
_LAYER_PARTS = {
    ".input_layernorm.": ".self_attn_norm.",
    ".post_attention_layernorm.": ".mlp_norm.",
}


def config_from_llama(llama_config: PreTrainedConfig) -> BasicFormerConfig:
    """The ``BasicFormerConfig`` of a decoder that computes what ``llama_config``'s
    ``LlamaForCausalLM`` computes (a ``transformers.LlamaConfig``)."""
    rope = dict(getattr(llama_config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"rope_parameters={rope}: only Llama's default rotary is supported, not "
            f"rope_type={rope['rope_type']!r}"
        )
    rope_theta = rope.get("rope_theta", getattr(llama_config, "rope_theta", 10000.0))
    return BasicFormerConfig(
        vocab_size=llama_config.vocab_size,
        hidden_size=llama_config.hidden_size,
        num_hidden_layers=llama_config.num_hidden_layers,
        num_attention_heads=llama_config.num_attention_heads,
        num_key_value_heads=llama_config.num_key_value_heads,
        head_dim=getattr(llama_config, "head_dim", None),
        intermediate_size=llama_config.intermediate_size,
        hidden_act=llama_config.hidden_act,
        mlp_type="gated",
        max_position_embeddings=llama_config.max_position_embeddings,
        position_embedding_type="rotary",
        rope_theta=rope_theta,
        norm_position="pre",
        norm_type="rmsnorm",
        layer_norm_eps=llama_config.rms_norm_eps,
        dropout=0.0,
        attention_dropout=llama_config.attention_dropout,
        attention_bias=llama_config.attention_bias,
        mlp_bias=llama_config.mlp_bias,
        initializer_range=llama_config.initializer_range,
        tie_word_embeddings=llama_config.tie_word_embeddings,
        is_decoder=True,
        use_cache=llama_config.use_cache,
        pad_token_id=llama_config.pad_token_id,
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
    )


def basicformer_state_from_llama(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM``'s state dict renamed for ``BasicFormerForCausalLM`` (same tensors).

    ``model.layers.N.input_layernorm`` becomes ``model.decoder.layers.N.self_attn_norm``,
    ``post_attention_layernorm`` ``mlp_norm``, ``model.norm`` ``model.decoder.final_norm``;
    ``lm_head`` and the projections keep their names. Rotary frequency buffers that old
    checkpoints carry are dropped: ours are computed from ``rope_theta``.
    """
    state = {}
    for name, tensor in state_dict.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        for old, new in _PREFIXES.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        for old, new in _LAYER_PARTS.items():
            name = name.replace(old, new)
        state[name] = tensor
    return state
