"""BasicFormer: one readable transformer that is an encoder, a decoder, or both.

Reading order: the MLP, one layer (self attention, optional cross attention, MLP, each a
residual sub-layer), a stack of layers with its positions and masks, then the Hugging Face
models: the bare ``BasicFormerModel`` and the three task models. Attention, masks, positions
and the KV cache all come from ``scratchformers.core_attention``; nothing here writes its own
attention math.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import slice_logits_to_keep

from scratchformers.core_attention import (
    Attention,
    LeanGenerationMixin,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    activation,
    build_attention_mask,
    cache_lengths,
    create_masks_for_generate,
    position_ids_from_padding_mask,
    sinusoidal_position_embedding,
)

from .configuration import BasicFormerConfig


class BasicFormerMLP(nn.Module):
    """The position-wise feed-forward block: widen, activate, narrow.

    ``mlp_type="gated"`` (Llama's SwiGLU, with ``hidden_act="silu"``) widens twice and lets one
    branch, activated, gate the other: ``down_proj(act(gate_proj(x)) * up_proj(x))``.
    """

    def __init__(self, config: BasicFormerConfig) -> None:
        super().__init__()
        width, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        gated = config.mlp_type == "gated"
        self.gate_proj = nn.Linear(width, inner, bias=bias) if gated else None
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.act = activation(config.hidden_act)
        self.down_proj = nn.Linear(inner, width, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(hidden_states)))
        gate = self.act(self.gate_proj(hidden_states))
        return self.down_proj(gate * self.up_proj(hidden_states))


def make_attention(
    config: BasicFormerConfig, layer_idx: int, *, causal: bool = False, cross: bool = False
) -> Attention:
    """A core-attention layer shaped by the config."""
    bias = config.attention_bias
    return Attention(
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config=config,
        is_causal=causal,
        is_cross_attention=cross,
        q_bias=bias,
        k_bias=bias,
        v_bias=bias,
        o_bias=bias,
        dropout=config.attention_dropout,
        layer_idx=layer_idx,
    )


def make_norm(config: BasicFormerConfig) -> nn.LayerNorm | nn.RMSNorm:
    """The norm the config names (``norm_type``), over the width of the residual stream."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class BasicFormerLayer(GradientCheckpointingLayer):
    """Self attention, then (in a decoder with an encoder) cross attention, then the MLP.

    Each of the three is a residual sub-layer. Pre-norm: ``x + f(norm(x))``; post-norm:
    ``norm(x + f(x))``.
    """

    def __init__(
        self, config: BasicFormerConfig, layer_idx: int, *, causal: bool, cross_attention: bool
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = make_attention(config, layer_idx, causal=causal)
        self.self_attn_norm = make_norm(config)
        self.cross_attn = make_attention(config, layer_idx, cross=True) if cross_attention else None
        self.cross_attn_norm = make_norm(config) if cross_attention else None
        self.mlp = BasicFormerMLP(config)
        self.mlp_norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def residual(
        self,
        norm: nn.LayerNorm | nn.RMSNorm,
        sublayer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
        hidden_states: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply one sub-layer with its residual connection and its norm."""
        if self.pre_norm:
            output, probabilities = sublayer(norm(hidden_states))
            return hidden_states + self.dropout(output), probabilities
        output, probabilities = sublayer(hidden_states)
        return norm(hidden_states + self.dropout(output)), probabilities

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the new hidden states and the self- and cross-attention probabilities
        (``None`` unless the backend is eager)."""
        hidden_states, self_probabilities = self.residual(
            self.self_attn_norm,
            lambda x: self.self_attn(
                x, attention_mask, position_embeddings=position_embeddings, cache=cache
            ),
            hidden_states,
        )
        cross_probabilities = None
        if self.cross_attn is not None:
            hidden_states, cross_probabilities = self.residual(
                self.cross_attn_norm,
                lambda x: self.cross_attn(
                    x, encoder_attention_mask, key_value_states=encoder_hidden_states, cache=cache
                ),
                hidden_states,
            )
        hidden_states, _ = self.residual(
            self.mlp_norm, lambda x: (self.mlp(x), None), hidden_states
        )
        return hidden_states, self_probabilities, cross_probabilities


class BasicFormerStack(nn.Module):
    """A stack of layers with its positions: an encoder, or a (causal) decoder.

    The stack that reads token ids owns the token embedding (``embed_tokens``). In an
    encoder-decoder the encoder owns it and the decoder receives embeddings made with it, so the
    shared table is stored once.
    """

    def __init__(
        self,
        config: BasicFormerConfig,
        *,
        causal: bool,
        cross_attention: bool = False,
        owns_token_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.cross_attention = cross_attention
        self.embed_tokens = (
            nn.Embedding(config.vocab_size, config.hidden_size) if owns_token_embedding else None
        )
        kind = config.position_embedding_type
        self.embed_positions = (
            LearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
            if kind == "learned"
            else None
        )
        self.rotary = (
            RotaryEmbedding(config.head_dim, base=config.rope_theta) if kind == "rotary" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            BasicFormerLayer(config, i, causal=causal, cross_attention=cross_attention)
            for i in range(config.num_hidden_layers)
        )
        # Pre-norm leaves the residual stream un-normalised, so the stack ends with a norm.
        self.final_norm = make_norm(config) if config.norm_position == "pre" else None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: object,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """Run the stack. ``attention_mask`` is the 2D padding mask (1 = token, 0 = padding)
        over the cached and the new tokens, or a prepared 4D mask."""
        inputs_embeds = self._embed(input_ids, inputs_embeds)
        batch, length = inputs_embeds.shape[:2]
        if self.cross_attention and encoder_hidden_states is None and not _has_cross_cache(cache):
            raise ValueError(
                "this decoder has cross attention: pass encoder_hidden_states (the encoder output)"
            )
        implementation = self.config._attn_implementation
        if output_attentions and implementation not in ("eager", None):
            raise ValueError(
                f"output_attentions needs the eager backend, but attn_implementation="
                f"{implementation!r}; load the model with attn_implementation='eager' or call "
                "model.set_attn_implementation('eager')"
            )

        past_length, key_length = cache_lengths(cache, length)
        padding_mask = (
            attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        )
        if position_ids is None:
            position_ids = position_ids_from_padding_mask(
                padding_mask, length, past_length, device=inputs_embeds.device
            )

        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(position_ids)
        elif self.config.position_embedding_type == "sinusoidal":
            hidden_states = hidden_states + sinusoidal_position_embedding(
                position_ids, self.config.hidden_size, dtype=hidden_states.dtype
            )
        rotary = self.rotary(position_ids, hidden_states.dtype) if self.rotary is not None else None
        hidden_states = self.dropout(hidden_states)

        mask_options = {
            "batch_size": batch,
            "query_length": length,
            "device": hidden_states.device,
            "attn_implementation": implementation,
            "dtype": hidden_states.dtype,
        }
        self_mask = build_attention_mask(
            attention_mask,
            key_length=key_length,
            causal=self.causal,
            past_length=past_length,
            **mask_options,
        )
        cross_mask = None
        if self.cross_attention and encoder_attention_mask is not None:
            cross_mask = build_attention_mask(
                encoder_attention_mask,
                key_length=encoder_attention_mask.shape[-1],
                causal=False,
                **mask_options,
            )

        all_hidden_states: list[torch.Tensor] = []
        all_attentions: list[torch.Tensor | None] = []
        all_cross_attentions: list[torch.Tensor | None] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states, self_probabilities, cross_probabilities = layer(
                hidden_states,
                self_mask,
                rotary,
                encoder_hidden_states,
                cross_mask,
                cache=cache,
            )
            all_attentions.append(self_probabilities)
            all_cross_attentions.append(cross_probabilities)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)

        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            cross_attentions=(
                tuple(all_cross_attentions) if output_attentions and self.cross_attention else None
            ),
        )
        return output if return_dict else output.to_tuple()

    def _embed(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            return inputs_embeds
        if self.embed_tokens is None:
            raise ValueError("this stack has no token embedding of its own: pass inputs_embeds")
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
            )
        return self.embed_tokens(input_ids)


def _has_cross_cache(cache: Cache | None) -> bool:
    return isinstance(cache, EncoderDecoderCache) and any(cache.is_updated.values())


def shift_tokens_right(
    labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int
) -> torch.Tensor:
    """Teacher forcing for seq2seq: the decoder reads the labels shifted right by one, starting
    with ``decoder_start_token_id``; ignored label positions (-100) become padding."""
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


class BasicFormerPreTrainedModel(PreTrainedModel):
    """What every BasicFormer model shares: the config class, weight init, backend support."""

    config_class = BasicFormerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BasicFormerLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # Static-cache generation builds its masks with the core's builder, like every forward.
    create_masks_for_generate = staticmethod(create_masks_for_generate)


class BasicFormerModel(BasicFormerPreTrainedModel):
    """A whole BasicFormer without a task head, in the mode its config names.

    * encoder (default): ``self.encoder``, bidirectional; returns ``BaseModelOutput``-like output;
    * decoder (``is_decoder``): ``self.decoder``, causal, with cross attention over
      ``encoder_hidden_states`` when ``add_cross_attention``;
    * encoder-decoder (``is_encoder_decoder``): both, the decoder attending to the encoder;
      returns ``Seq2SeqModelOutput``.
    """

    def __init__(self, config: BasicFormerConfig) -> None:
        super().__init__(config)
        config.check()
        self.encoder = None
        self.decoder = None
        if not config.is_decoder:
            self.encoder = BasicFormerStack(config, causal=False)
        if config.is_decoder or config.is_encoder_decoder:
            self.decoder = BasicFormerStack(
                config,
                causal=True,
                cross_attention=config.is_encoder_decoder or config.add_cross_attention,
                owns_token_embedding=not config.is_encoder_decoder,
            )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return (self.encoder or self.decoder).embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        (self.encoder or self.decoder).embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> BasicFormerStack | None:
        return self.encoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPastAndCrossAttentions | Seq2SeqModelOutput | tuple:
        """Encoder and decoder-only modes read ``input_ids``/``attention_mask``/``position_ids``;
        the encoder-decoder mode reads those for the encoder (or takes ``encoder_outputs``) and the
        ``decoder_*`` ones for the decoder. ``encoder_hidden_states``/``encoder_attention_mask``
        feed a decoder-only model's cross attention."""
        config = self.config
        output_attentions = (
            config.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        is_generating_decoder = self.decoder is not None
        use_cache = (config.use_cache if use_cache is None else use_cache) and is_generating_decoder
        if use_cache and cache is None:
            cache = (
                EncoderDecoderCache(DynamicCache(), DynamicCache())
                if self.decoder.cross_attention
                else DynamicCache()
            )
        if not use_cache:
            cache = None
        flags = {
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "return_dict": True,
        }

        if not config.is_encoder_decoder:
            stack = self.encoder or self.decoder
            output = stack(
                input_ids,
                attention_mask,
                position_ids,
                inputs_embeds,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                cache=cache,
                **flags,
            )
            if self.encoder is not None:
                output = BaseModelOutput(
                    last_hidden_state=output.last_hidden_state,
                    hidden_states=output.hidden_states,
                    attentions=output.attentions,
                )
            return output if return_dict else output.to_tuple()

        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids, attention_mask, position_ids, inputs_embeds, **flags
            )
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError(
                    "an encoder-decoder needs decoder_input_ids (or labels, in the seq2seq model)"
                )
            decoder_inputs_embeds = self.encoder.embed_tokens(decoder_input_ids)
        decoder_outputs = self.decoder(
            attention_mask=decoder_attention_mask,
            position_ids=decoder_position_ids,
            inputs_embeds=decoder_inputs_embeds,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            **flags,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


def _set_mode(
    config: BasicFormerConfig, task: str, *, is_decoder: bool, is_encoder_decoder: bool
) -> None:
    """Put a task model's config in the mode the task needs, refusing a contradicting flag."""
    for flag, wanted in (("is_decoder", is_decoder), ("is_encoder_decoder", is_encoder_decoder)):
        if getattr(config, flag) and not wanted:
            raise ValueError(f"{task} cannot be built from a config with {flag}=True")
    config.is_decoder = is_decoder
    config.is_encoder_decoder = is_encoder_decoder
    if config.add_cross_attention:
        raise ValueError(
            f"{task} has no use for add_cross_attention=True: it is for a bare decoder "
            "(BasicFormerModel) that attends to encoder_hidden_states you pass in"
        )
    config.check()


class BasicFormerForMaskedLM(BasicFormerPreTrainedModel):
    """An encoder with a language-modelling head that fills in masked tokens."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: BasicFormerConfig) -> None:
        _set_mode(config, type(self).__name__, is_decoder=False, is_encoder_decoder=False)
        super().__init__(config)
        self.model = BasicFormerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> MaskedLMOutput | tuple:
        """``labels``: the token to predict at each position, -100 where nothing is predicted."""
        outputs = self.model(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = ForMaskedLMLoss(logits, labels, self.config.vocab_size, **_loss_kwargs(kwargs))
        output = MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class BasicFormerForCausalLM(BasicFormerPreTrainedModel, LeanGenerationMixin):
    """A causal decoder with a language-modelling head: next-token prediction and ``generate()``."""

    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}

    def __init__(self, config: BasicFormerConfig) -> None:
        _set_mode(config, type(self).__name__, is_decoder=True, is_encoder_decoder=False)
        super().__init__(config)
        self.model = BasicFormerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: object,
    ) -> CausalLMOutputWithCrossAttentions | tuple:
        """``labels`` are the input ids themselves (-100 to ignore a position); the shift that
        makes position ``t`` predict token ``t + 1`` happens inside."""
        outputs = self.model(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = ForCausalLMLoss(logits, labels, self.config.vocab_size, **_loss_kwargs(kwargs))
        output = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


class BasicFormerForSeq2SeqLM(BasicFormerPreTrainedModel, GenerationMixin):
    """An encoder-decoder with a language-modelling head: translation-style ``generate()``."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: BasicFormerConfig) -> None:
        _set_mode(config, type(self).__name__, is_decoder=False, is_encoder_decoder=True)
        super().__init__(config)
        self.model = BasicFormerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> BasicFormerStack:
        return self.model.encoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: object,
    ) -> Seq2SeqLMOutput | tuple:
        """``labels`` are the target ids (-100 to ignore); without ``decoder_input_ids`` the
        decoder reads them shifted right (teacher forcing)."""
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        outputs = self.model(
            input_ids,
            attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
            encoder_outputs=encoder_outputs,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = ForMaskedLMLoss(logits, labels, self.config.vocab_size, **_loss_kwargs(kwargs))
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


def _return_dict(config: BasicFormerConfig, return_dict: bool | None) -> bool:
    return config.return_dict if return_dict is None else return_dict


def _loss_kwargs(kwargs: dict[str, object]) -> dict[str, object]:
    # Trainers pass the token count of the whole accumulated batch, for an exact mean.
    return (
        {"num_items_in_batch": kwargs["num_items_in_batch"]}
        if "num_items_in_batch" in kwargs
        else {}
    )
