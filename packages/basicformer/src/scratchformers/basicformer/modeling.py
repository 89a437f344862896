"""BasicFormer: one readable transformer that is an encoder, a decoder, or both.

Reading order: the MLP, one layer, a stack of layers with its embeddings, positions and masks,
the bare ``BasicFormerModel`` in its three modes, then the task models. Attention, masks,
positions and the KV cache come from ``scratchformers.core_attention``; ``output_hidden_states``,
``output_attentions`` and ``return_dict`` from transformers' own output machinery. Nothing here
writes its own attention math or output plumbing.

Each choice is made once, so no code path is written twice: ``BasicFormerLayer.residual`` places
the norm (before the sub-layer or after the addition); ``BasicFormerModel`` builds the stacks its
mode needs, and one branch of its forward holds the seq2seq plumbing (encoder outputs, decoder ids
through the shared embedding, the combined output); ``BasicFormerLMHeadModel`` sets the task's
mode and puts the head's logits and loss in place of the model's last hidden state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    ModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.bart.modeling_bart import shift_tokens_right
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from scratchformers.core_attention import (
    Attention,
    ChecksCheckpoints,
    InputMajorLinears,
    LeanGenerationMixin,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
    activation,
    check_token_labels,
    create_masks_for_generate,
    cross_attention_mask,
    prepare_attention_inputs,
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
        self.gate_proj = nn.Linear(width, inner, bias=bias) if config.mlp_type == "gated" else None
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.act = activation(config.hidden_act)
        self.down_proj = nn.Linear(inner, width, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(hidden_states)))
        gate = self.act(self.gate_proj(hidden_states))
        return self.down_proj(gate * self.up_proj(hidden_states))


def make_attention(config: BasicFormerConfig, layer_idx: int, **kind: bool) -> Attention:
    """A core-attention layer shaped by the config, of the ``kind`` named (``is_causal``,
    ``is_cross_attention``); ``attention_bias`` biases all four projections or none."""
    biases = dict.fromkeys(("q_bias", "k_bias", "v_bias", "o_bias"), config.attention_bias)
    return Attention(
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config=config,
        dropout=config.attention_dropout,
        layer_idx=layer_idx,
        **biases,
        **kind,
    )


def make_norm(config: BasicFormerConfig) -> nn.LayerNorm | nn.RMSNorm:
    """The norm the config names (``norm_type``), over the width of the residual stream."""
    norm = nn.RMSNorm if config.norm_type == "rmsnorm" else nn.LayerNorm
    return norm(config.hidden_size, eps=config.layer_norm_eps)


class BasicFormerLayer(GradientCheckpointingLayer):
    """Self attention, then (in a decoder with an encoder) cross attention, then the MLP, each a
    residual sub-layer with its own norm."""

    def __init__(
        self, config: BasicFormerConfig, layer_idx: int, *, causal: bool, cross_attention: bool
    ) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = make_attention(config, layer_idx, is_causal=causal)
        self.self_attn_norm = make_norm(config)
        self.cross_attn = self.cross_attn_norm = None
        if cross_attention:
            self.cross_attn = make_attention(config, layer_idx, is_cross_attention=True)
            self.cross_attn_norm = make_norm(config)
        self.mlp = BasicFormerMLP(config)
        self.mlp_norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def residual(
        self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module
    ) -> torch.Tensor:
        """One residual sub-layer, the only place where the norm's position matters. Pre-norm
        normalises the sub-layer's input, ``x + f(norm(x))``; post-norm (the original
        Transformer, BERT) normalises after the addition, ``norm(x + f(x))``."""
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        def attend(x: torch.Tensor) -> torch.Tensor:
            mask, rotary = attention_mask, position_embeddings
            return self.self_attn(x, mask, position_embeddings=rotary, cache=cache, **kwargs)[0]

        def attend_to_encoder(x: torch.Tensor) -> torch.Tensor:
            mask, encoder = encoder_attention_mask, encoder_hidden_states
            return self.cross_attn(x, mask, key_value_states=encoder, cache=cache, **kwargs)[0]

        x = self.residual(hidden_states, attend, self.self_attn_norm)
        if self.cross_attn is not None:
            x = self.residual(x, attend_to_encoder, self.cross_attn_norm)
        return self.residual(x, self.mlp, self.mlp_norm)


class BasicFormerPreTrainedModel(ChecksCheckpoints, PreTrainedModel):
    """What every BasicFormer model shares: the config class, weight init, backend support,
    and a ``from_pretrained`` that names a damaged weights file or a weight of another shape.

    BasicFormer mirrors no transformers architecture, so it takes the checks alone
    (``ChecksCheckpoints``), not ``ConvertsCheckpoints``: with no converter, that would only
    add a read of every config.json and an ``export_to_transformers`` that cannot work.
    """

    config_class = BasicFormerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BasicFormerLayer"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Static-cache generation builds its masks with the core's builder, like every forward.
    create_masks_for_generate = staticmethod(create_masks_for_generate)


class BasicFormerStack(BasicFormerPreTrainedModel):
    """A stack of layers with its positions; :class:`BasicFormerEncoder` (bidirectional) and
    :class:`BasicFormerDecoder` (causal, optionally attending to an encoder) are its two kinds.

    The decoder of an encoder-decoder attends to the encoder, has no token embedding of its own
    (it receives embeddings made with the encoder's ``embed_tokens``, so the shared table is
    stored once), and names its inputs in errors as the user does (``decoder_attention_mask``).
    """

    causal: ClassVar[bool]

    def __init__(self, config: BasicFormerConfig) -> None:
        super().__init__(config)
        seq2seq_decoder = self.causal and config.is_encoder_decoder
        self.cross_attention = seq2seq_decoder or config.add_cross_attention
        self.argument_prefix = "decoder_" if seq2seq_decoder else ""
        width, kind = config.hidden_size, config.position_embedding_type
        self.embed_tokens = None if seq2seq_decoder else TokenEmbedding(config.vocab_size, width)
        self.embed_positions = self.rotary = None
        if kind == "learned":
            self.embed_positions = LearnedPositionalEmbedding(config.max_position_embeddings, width)
        elif kind == "sinusoidal":
            self.embed_positions = SinusoidalPositionalEmbedding(width)
        elif kind == "rotary":
            self.rotary = RotaryEmbedding(config.head_dim, base=config.rope_theta)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            BasicFormerLayer(config, i, causal=self.causal, cross_attention=self.cross_attention)
            for i in range(config.num_hidden_layers)
        )
        # Pre-norm leaves the residual stream un-normalised, so the stack ends with a norm.
        self.final_norm = make_norm(config) if config.norm_position == "pre" else None
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutput | BaseModelOutputWithPastAndCrossAttentions:
        """Run the stack. ``attention_mask`` is the 2D padding mask (1 = token, 0 = padding)
        over the cached and the new tokens, or a prepared 4D mask."""
        inputs_embeds = self._embed(input_ids, inputs_embeds)
        # Once cached, the encoder's keys and values are all cross attention needs.
        cross_cached = isinstance(cache, EncoderDecoderCache) and any(cache.is_updated.values())
        if self.cross_attention and encoder_hidden_states is None and not cross_cached:
            raise ValueError(
                "this decoder has cross attention: pass encoder_hidden_states (the encoder output)"
            )
        cache = self._cache(cache, use_cache)
        position_ids, mask = prepare_attention_inputs(
            self.config,
            inputs_embeds,
            attention_mask,
            cache,
            position_ids,
            causal=self.causal,
            argument_prefix=self.argument_prefix,
        )
        # In an encoder-decoder the source's mask is the user's attention_mask.
        source_mask = "attention_mask" if self.argument_prefix else "encoder_attention_mask"
        cross_mask = cross_attention_mask(
            self.config, inputs_embeds, encoder_attention_mask, argument=source_mask
        )

        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            positions = self.embed_positions(position_ids)
            hidden_states = hidden_states + positions.to(inputs_embeds.dtype)
        rope = self.rotary(position_ids, inputs_embeds.dtype) if self.rotary is not None else None
        hidden_states = self.dropout(hidden_states)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, mask, rope, encoder_hidden_states, cross_mask, cache=cache, **kwargs
            )
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if not self.causal:
            return BaseModelOutput(last_hidden_state=hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache
        )

    def _embed(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            return inputs_embeds
        if self.embed_tokens is None:
            raise ValueError("this stack has no token embedding of its own: pass inputs_embeds")
        return self.embed_tokens(input_ids)

    def _cache(self, cache: Cache | None, use_cache: bool | None) -> Cache | None:
        """The KV cache this call fills: none for an encoder or without ``use_cache``."""
        if not (self.causal and use_cache):
            return None
        if cache is not None:
            return cache
        if self.cross_attention:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        return DynamicCache()


class BasicFormerEncoder(BasicFormerStack):
    """The bidirectional stack: every token sees every other (padding aside)."""

    causal = False
    _can_record_outputs = {"hidden_states": BasicFormerLayer, "attentions": Attention}


class BasicFormerDecoder(BasicFormerStack):
    """The causal stack, with cross attention over an encoder's output when built with it."""

    causal = True
    # Self and cross attention are the same class: the recorder tells them apart by name.
    _can_record_outputs = {
        "hidden_states": BasicFormerLayer,
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Attention, index=1, layer_name="cross_attn"),
    }


class BasicFormerModel(BasicFormerPreTrainedModel):
    """A whole BasicFormer without a task head, in the mode its config names.

    * encoder (default): ``self.encoder``, bidirectional; returns ``BaseModelOutput``;
    * decoder (``is_decoder``): ``self.decoder``, causal, with cross attention over
      ``encoder_hidden_states`` when ``add_cross_attention``;
    * encoder-decoder (``is_encoder_decoder``): both, the decoder attending to the encoder;
      returns ``Seq2SeqModelOutput``.
    """

    def __init__(self, config: BasicFormerConfig) -> None:
        super().__init__(config)
        config.check()
        self.encoder = None if config.is_decoder else BasicFormerEncoder(config)
        decoder = config.is_decoder or config.is_encoder_decoder
        self.decoder = BasicFormerDecoder(config) if decoder else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return (self.encoder or self.decoder).embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        (self.encoder or self.decoder).embed_tokens = value

    @can_return_tuple
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
        **kwargs: object,
    ) -> BaseModelOutput | BaseModelOutputWithPastAndCrossAttentions | Seq2SeqModelOutput:
        """Encoder and decoder-only modes read ``input_ids``/``attention_mask``/``position_ids``;
        the encoder-decoder mode reads those for the encoder (or takes ``encoder_outputs``) and the
        ``decoder_*`` ones for the decoder. ``encoder_hidden_states``/``encoder_attention_mask``
        feed a decoder-only model's cross attention."""
        inputs = (input_ids, attention_mask, position_ids, inputs_embeds)
        if not self.config.is_encoder_decoder:
            # One stack: an encoder has no cache and no cross attention, so it ignores those.
            return (self.encoder or self.decoder)(
                *inputs,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **kwargs,
            )

        if encoder_outputs is None:
            encoder_outputs = self.encoder(*inputs, return_dict=True, **kwargs)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError(
                    "an encoder-decoder needs decoder_input_ids (or labels, in the seq2seq model)"
                )
            decoder_inputs_embeds = self.encoder.embed_tokens(
                decoder_input_ids, argument="decoder_input_ids"
            )
        decoder_outputs = self.decoder(
            attention_mask=decoder_attention_mask,
            position_ids=decoder_position_ids,
            inputs_embeds=decoder_inputs_embeds,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class BasicFormerLMHeadModel(BasicFormerPreTrainedModel):
    """What the task models share: the bare model in the task's mode and a language-modelling
    head, tied to the token embedding unless ``tie_word_embeddings=False``."""

    # The config's mode flags as this task needs them; a config that says otherwise is refused.
    mode: ClassVar[dict[str, bool]]

    def __init__(self, config: BasicFormerConfig) -> None:
        task = type(self).__name__
        for flag, wanted in self.mode.items():
            if getattr(config, flag) and not wanted:
                raise ValueError(f"{task} cannot be built from a config with {flag}=True")
        config.update(self.mode)
        if config.add_cross_attention:
            raise ValueError(
                f"{task} has no use for add_cross_attention=True: it is for a bare decoder "
                "(BasicFormerModel) that attends to encoder_hidden_states you pass in"
            )
        super().__init__(config)
        self.model = BasicFormerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _lm_output(
        self,
        output_class: type[ModelOutput],
        outputs: ModelOutput,
        labels: torch.LongTensor | None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: object,
    ) -> ModelOutput:
        """The task's output: the head's logits (and their loss against ``labels``) in place of
        the model's last hidden state, everything else (cache, hidden states, attentions) as the
        model returned it."""
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        rest = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return output_class(loss=loss, logits=logits, **rest)


class BasicFormerForMaskedLM(BasicFormerLMHeadModel):
    """An encoder with a language-modelling head that fills in masked tokens."""

    mode = {"is_decoder": False, "is_encoder_decoder": False}
    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: object,
    ) -> MaskedLMOutput:
        """``labels``: the token to predict at each position, -100 where nothing is predicted."""
        if labels is not None:
            check_token_labels(labels, input_ids, inputs_embeds, self.config.vocab_size)
        outputs = self.model(
            input_ids, attention_mask, position_ids, inputs_embeds, return_dict=True, **kwargs
        )
        return self._lm_output(MaskedLMOutput, outputs, labels, **kwargs)


class BasicFormerForCausalLM(InputMajorLinears, BasicFormerLMHeadModel, LeanGenerationMixin):
    """A causal decoder with a language-modelling head: next-token prediction and ``generate()``."""

    mode = {"is_decoder": True, "is_encoder_decoder": False}
    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}

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
    ) -> CausalLMOutputWithCrossAttentions:
        """``labels`` are the input ids themselves (-100 to ignore a position); the shift that
        makes position ``t`` predict token ``t + 1`` happens inside."""
        if labels is not None:
            check_token_labels(labels, input_ids, inputs_embeds, self.config.vocab_size)
        outputs = self.model(
            input_ids,
            attention_mask,
            position_ids,
            inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return self._lm_output(
            CausalLMOutputWithCrossAttentions, outputs, labels, logits_to_keep, **kwargs
        )


class BasicFormerForSeq2SeqLM(BasicFormerLMHeadModel, GenerationMixin):
    """An encoder-decoder with a language-modelling head: translation-style ``generate()``."""

    mode = {"is_decoder": False, "is_encoder_decoder": True}
    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: BasicFormerConfig) -> None:
        super().__init__(config)
        # The decoder already reads the labels shifted right, so logits and labels line up.
        self.loss_type = "ForMaskedLM"

    @can_return_tuple
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
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: object,
    ) -> Seq2SeqLMOutput:
        """``labels`` are the target ids (-100 to ignore); without ``decoder_input_ids`` the
        decoder reads them shifted right (teacher forcing)."""
        if labels is not None:
            # Checked before the shift puts them in the decoder's inputs, where a bad id would
            # be blamed on decoder_input_ids.
            check_token_labels(
                labels,
                decoder_input_ids,
                decoder_inputs_embeds,
                self.config.vocab_size,
                argument_prefix="decoder_",
            )
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            # BART's helper: labels shifted right behind the start token, -100 as padding.
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
            return_dict=True,
            **kwargs,
        )
        return self._lm_output(Seq2SeqLMOutput, outputs, labels, logits_to_keep, **kwargs)
