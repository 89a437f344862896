"""GPT-2, top to bottom: MLP, block, the stack, the language-model head.

Module names follow transformers' GPT-2 (``transformer.wte``, ``h.<i>.ln_1``, ``attn``,
``mlp.c_fc``, ...) so that its checkpoints map onto ours with little more than a transpose:
GPT-2 stores its projections as ``Conv1D`` (``x @ W``) and fuses q, k and v into one ``c_attn``;
here they are plain ``nn.Linear`` layers and the shared core's separate q/k/v/o projections
(see ``convert.py``). Attention, masks, positions and the KV cache come from
``scratchformers.core_attention``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from scratchformers.core_attention import (
    Attention,
    ConvertsCheckpoints,
    InputMajorLinears,
    LeanGenerationMixin,
    LearnedPositionalEmbedding,
    TokenEmbedding,
    activation,
    check_token_labels,
    create_masks_for_generate,
    prepare_attention_inputs,
)

from .configuration import GPT2Config
from .convert import CONVERTER


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.act = activation(config.activation_function)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class GPT2Block(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        head_dim = config.n_embd // config.n_head
        scaling = head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scaling /= layer_idx + 1
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(
            config.n_embd,
            config.n_head,
            config=config,
            is_causal=True,
            dropout=config.attn_pdrop,
            scaling=scaling,
            layer_idx=layer_idx,
        )
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        attended, _ = self.attn(self.ln_1(hidden_states), attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + self.resid_dropout(attended)
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states


class GPT2PreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    config_class = GPT2Config
    checkpoint_converters = (CONVERTER,)  # from_pretrained reads transformers' GPT-2 too
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2Block"]
    # Causal-mask buffers that old GPT-2 checkpoints (openai-community/gpt2) still carry.
    _keys_to_ignore_on_load_unexpected = [r"\.attn\.(masked_)?bias$"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # output_hidden_states / output_attentions are recorded by transformers' hooks.
    _can_record_outputs = {"hidden_states": GPT2Block, "attentions": Attention}
    create_masks_for_generate = staticmethod(create_masks_for_generate)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init: normal(0, initializer_range), and the residual output projections
        scaled by 1/sqrt(2 * n_layer) so the residual stream does not grow with depth."""
        super()._init_weights(module)
        if isinstance(module, GPT2Block):
            std = self.config.initializer_range / (2 * self.config.n_layer) ** 0.5
            init.normal_(module.attn.o_proj.weight, mean=0.0, std=std)
            init.normal_(module.mlp.c_proj.weight, mean=0.0, std=std)


class GPT2Model(GPT2PreTrainedModel):
    """Token and position embeddings, ``n_layer`` blocks, a final LayerNorm."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        config.check()
        self.wte = TokenEmbedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositionalEmbedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if not use_cache:
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        position_ids, mask = prepare_attention_inputs(
            self.config, inputs_embeds, attention_mask, cache, position_ids, causal=True
        )

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        for block in self.h:
            hidden_states = block(hidden_states, mask, cache=cache, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class GPT2LMHeadModel(InputMajorLinears, GPT2PreTrainedModel, LeanGenerationMixin):
    """GPT-2 with its language-model head (tied to the token embedding)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.loss_type = "ForCausalLM"  # transformers' shifted next-token loss
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (-100 to ignore); the shift happens inside."""
        if labels is not None:
            check_token_labels(labels, input_ids, inputs_embeds, self.config.vocab_size)
        outputs = self.transformer(
            input_ids,
            attention_mask,
            position_ids,
            cache,
            inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
