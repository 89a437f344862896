"""EncDec: the classic sequence-to-sequence transformer (an encoder, and a decoder that attends to it).

Reading order: the two layers (encoder: self attention then feed-forward; decoder: causal self
attention, cross attention over the encoder's output, feed-forward), the stacks with their
embeddings and positions, then the Hugging Face models: the bare ``EncDecModel`` and
``EncDecForConditionalGeneration``, which adds the output layer and ``generate()``.

One token embedding serves the source, the target and (tied) the output layer: the encoder
owns it and the decoder is handed embeddings made with it, so it is stored once. The options
of :class:`~scratchformers.encdec.EncDecConfig` cover BART (learned positions read at an offset
of 2, a LayerNorm on the embeddings, post-norm, GELU) and Marian / opus-mt (sinusoidal
positions, embeddings scaled by ``sqrt(d_model)``, post-norm, SiLU), and pre-norm for models
trained here. Attention, masks, positions and the KV cache come from
``scratchformers.core_attention``; the outputs' plumbing from transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.bart.modeling_bart import shift_tokens_right
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from scratchformers.core_attention import (
    Attention,
    ConvertsCheckpoints,
    InputMajorLinears,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
    activation,
    check_token_labels,
    cross_attention_mask,
    prepare_attention_inputs,
)

from .configuration import EncDecConfig
from .convert import CONVERTERS


def make_attention(
    config: EncDecConfig, heads: int, layer_idx: int, *, causal: bool = False, cross: bool = False
) -> Attention:
    """A core-attention layer as BART's: biases on all four projections, ``head_dim ** -0.5``."""
    return Attention(
        config.d_model,
        heads,
        config=config,
        is_causal=causal,
        is_cross_attention=cross,
        dropout=config.attention_dropout,
        layer_idx=layer_idx,
    )


class EncDecLayer(GradientCheckpointingLayer):
    """What both layers share: the feed-forward block, widen (``fc1``), activate, drop, narrow
    (``fc2``), under BART's names so that checkpoints map one to one."""

    def __init__(self, config: EncDecConfig, inner: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.fc1 = nn.Linear(config.d_model, inner)
        self.act = activation(config.activation_function)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.fc2 = nn.Linear(inner, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.act(self.fc1(hidden_states))))


class EncDecEncoderLayer(EncDecLayer):
    """Self attention over the source, then the feed-forward block, each a residual sub-layer.

    Post-norm (BART, Marian) normalises after the addition, ``norm(x + f(x))``; pre-norm
    normalises the sub-layer's input, ``x + f(norm(x))``. The norms keep BART's names
    (``self_attn_layer_norm``, ``final_layer_norm``) in both.
    """

    def __init__(self, config: EncDecConfig, layer_idx: int) -> None:
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = make_attention(config, config.encoder_attention_heads, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        def attend(x: torch.Tensor) -> torch.Tensor:
            return self.self_attn(x, attention_mask, **kwargs)[0]

        x = hidden_states
        if self.pre_norm:
            x = x + self.dropout(attend(self.self_attn_layer_norm(x)))
            return x + self.dropout(self.feed_forward(self.final_layer_norm(x)))

        x = self.self_attn_layer_norm(x + self.dropout(attend(x)))
        return self.final_layer_norm(x + self.dropout(self.feed_forward(x)))


class EncDecDecoderLayer(EncDecLayer):
    """Causal self attention, cross attention over the encoder's output (``encoder_attn``), then
    the feed-forward block; each a residual sub-layer, normalised as in the encoder."""

    def __init__(self, config: EncDecConfig, layer_idx: int) -> None:
        super().__init__(config, config.decoder_ffn_dim)
        heads = config.decoder_attention_heads
        self.self_attn = make_attention(config, heads, layer_idx, causal=True)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = make_attention(config, heads, layer_idx, cross=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        def attend(x: torch.Tensor) -> torch.Tensor:
            return self.self_attn(x, attention_mask, cache=cache, **kwargs)[0]

        def attend_to_source(x: torch.Tensor) -> torch.Tensor:
            # With a cache, the encoder's keys and values are projected at the first step only.
            mask, source = encoder_attention_mask, encoder_hidden_states
            return self.encoder_attn(x, mask, key_value_states=source, cache=cache, **kwargs)[0]

        x = hidden_states
        if self.pre_norm:
            x = x + self.dropout(attend(self.self_attn_layer_norm(x)))
            x = x + self.dropout(attend_to_source(self.encoder_attn_layer_norm(x)))
            return x + self.dropout(self.feed_forward(self.final_layer_norm(x)))

        x = self.self_attn_layer_norm(x + self.dropout(attend(x)))
        x = self.encoder_attn_layer_norm(x + self.dropout(attend_to_source(x)))
        return self.final_layer_norm(x + self.dropout(self.feed_forward(x)))


class EncDecPreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    """What every EncDec model shares: the config class, weight init, backend support."""

    config_class = EncDecConfig
    checkpoint_converters = CONVERTERS  # from_pretrained reads BART and Marian too
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncDecEncoderLayer", "EncDecDecoderLayer"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' defaults (normal(0, init_std) for Linear and Embedding, zero padding
        # row, LayerNorm 1/0), plus the output bias, which starts at zero as in BART.
        super()._init_weights(module)
        if isinstance(module, EncDecForConditionalGeneration):
            init.zeros_(module.final_logits_bias)


class EncDecStack(EncDecPreTrainedModel):
    """What both stacks share: positions, the embedding LayerNorm, dropout, the final norm.

    ``argument`` is how the user names this stack's tokens (``decoder_input_ids`` for the
    decoder), so that errors name what the user passed.
    """

    argument = "input_ids"

    def __init__(self, config: EncDecConfig, *, token_table: bool = False) -> None:
        super().__init__(config)
        width = config.d_model
        if token_table:
            # BART's and Marian's embeddings keep the padding row at zero, without gradient.
            # Registered first, so that it is the first parameter, as transformers' `shared`
            # is: AdamW steps parameters in this order and holds each one's last temporary
            # until the next one's exists, so the parameter before this, the largest, adds
            # its size to the step's peak memory.
            self.embed_tokens = TokenEmbedding(config.vocab_size, width, config.pad_token_id)
        if config.position_embedding_type == "learned":
            self.embed_positions = LearnedPositionalEmbedding(
                config.max_position_embeddings, width, offset=config.position_offset
            )
        else:
            self.embed_positions = SinusoidalPositionalEmbedding(width)
        self.layernorm_embedding = nn.LayerNorm(width) if config.layernorm_embedding else None
        self.dropout = nn.Dropout(config.dropout)
        # Pre-norm leaves the residual stream un-normalised: the stack ends with a norm.
        self.layer_norm = nn.LayerNorm(width) if config.norm_position == "pre" else None

    def _check_length(self, position_ids: torch.Tensor) -> None:
        """Positions past ``max_position_embeddings`` raise, for sinusoidal positions too:
        Marian's table stops there, and a model trained here never saw longer sequences."""
        if torch.compiler.is_compiling():
            return
        limit, longest = self.config.max_position_embeddings, int(position_ids.max()) + 1
        if longest > limit:
            raise ValueError(
                f"{self.argument} is {longest} tokens long (with any cached ones), longer than "
                f"max_position_embeddings={limit}: truncate it (tokenizer(..., truncation=True, "
                f"max_length={limit})) or generate fewer tokens"
            )

    def _embed_positions(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings plus positions, normalised (BART) and dropped out."""
        self._check_length(position_ids)
        positions = self.embed_positions(position_ids)
        hidden_states = inputs_embeds + positions.to(inputs_embeds.dtype)
        if self.layernorm_embedding is not None:
            hidden_states = self.layernorm_embedding(hidden_states)
        return self.dropout(hidden_states)

    def _final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.layer_norm is None else self.layer_norm(hidden_states)


class EncDecEncoder(EncDecStack):
    """The bidirectional stack over the source. It owns the shared token embedding."""

    _can_record_outputs = {"hidden_states": EncDecEncoderLayer, "attentions": Attention}

    def __init__(self, config: EncDecConfig) -> None:
        super().__init__(config, token_table=True)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.layers = nn.ModuleList(
            EncDecEncoderLayer(config, i) for i in range(config.encoder_layers)
        )
        self.post_init()

    def embed(self, input_ids: torch.LongTensor, argument: str = "input_ids") -> torch.Tensor:
        """Token embeddings, scaled by ``sqrt(d_model)`` with ``scale_embedding``."""
        embeddings = self.embed_tokens(input_ids, argument=argument)
        return embeddings * self.embed_scale if self.embed_scale != 1.0 else embeddings

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BaseModelOutput:
        """Encode the source. ``attention_mask``: 1 for tokens, 0 for padding."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        # Positions count 0, 1, 2, ... in every row, padding or not, as BART's and Marian's do.
        position_ids, mask = prepare_attention_inputs(
            self.config, inputs_embeds, attention_mask, None, causal=False, positions="count"
        )
        hidden_states = self._embed_positions(inputs_embeds, position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self._final_norm(hidden_states))


class EncDecDecoder(EncDecStack):
    """The causal stack over the target, attending to the encoder's output in every layer.

    It reads embeddings made with the encoder's token table (``inputs_embeds``).
    """

    argument = "decoder_input_ids"
    # Self and cross attention are the same class: the recorder tells them apart by name.
    _can_record_outputs = {
        "hidden_states": EncDecDecoderLayer,
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Attention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: EncDecConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(
            EncDecDecoderLayer(config, i) for i in range(config.decoder_layers)
        )
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """Decode. ``attention_mask`` is the target's padding mask over the cached and new
        tokens; ``encoder_attention_mask`` the source's."""
        if encoder_hidden_states is None and not _has_cross_cache(cache):
            raise ValueError("the decoder attends to the source: pass encoder_hidden_states")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        elif not use_cache:
            cache = None
        position_ids, mask = prepare_attention_inputs(
            self.config,
            inputs_embeds,
            attention_mask,
            cache,
            causal=True,
            positions="count",
            argument_prefix="decoder_",
        )
        cross_mask = cross_attention_mask(
            self.config, inputs_embeds, encoder_attention_mask, argument="attention_mask"
        )
        hidden_states = self._embed_positions(inputs_embeds, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, mask, encoder_hidden_states, cross_mask, cache=cache, **kwargs
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self._final_norm(hidden_states), cache=cache
        )


def _has_cross_cache(cache: Cache | None) -> bool:
    return isinstance(cache, EncoderDecoderCache) and any(cache.is_updated.values())


class EncDecModel(EncDecPreTrainedModel):
    """The encoder and the decoder, without the output layer: ``Seq2SeqModelOutput``."""

    def __init__(self, config: EncDecConfig) -> None:
        super().__init__(config)
        config.check()  # a config changed after it was built is checked again here
        self.encoder = EncDecEncoder(config)
        self.decoder = EncDecDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> EncDecEncoder:
        return self.encoder

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
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> Seq2SeqModelOutput:
        """Encode the source (``input_ids``, ``attention_mask``; or take ``encoder_outputs``)
        and decode the target (``decoder_input_ids``, ``decoder_attention_mask``)."""
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids, attention_mask, inputs_embeds, return_dict=True, **kwargs
            )
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError(
                    "the decoder needs decoder_input_ids (or labels, which are shifted right "
                    "into them, in EncDecForConditionalGeneration)"
                )
            decoder_inputs_embeds = self.encoder.embed(decoder_input_ids, "decoder_input_ids")
        decoder_outputs = self.decoder(
            decoder_inputs_embeds,
            decoder_attention_mask,
            encoder_outputs.last_hidden_state,
            attention_mask,
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


class EncDecForConditionalGeneration(InputMajorLinears, EncDecPreTrainedModel, GenerationMixin):
    """The encoder-decoder with its output layer: training on (source, target) pairs and
    ``generate()`` (greedy, beam search, sampling) with an ``EncoderDecoderCache``.

    The output layer is the token embedding (``tie_word_embeddings``) plus a per-token bias,
    ``final_logits_bias``, a buffer as in BART and Marian (zero unless a checkpoint sets it).
    """

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: EncDecConfig) -> None:
        super().__init__(config)
        self.model = EncDecModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.final_logits_bias = nn.Buffer(torch.zeros(1, config.vocab_size))
        # The decoder already reads the labels shifted right, so logits and labels line up.
        self.loss_type = "ForMaskedLM"
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> EncDecEncoder:
        return self.model.encoder

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """transformers' resize (the shared table and the tied output layer), and the output
        bias with them: cut, or extended with zeros for the new tokens."""
        embeddings = super().resize_token_embeddings(
            new_num_tokens, pad_to_multiple_of, mean_resizing
        )
        size, old = embeddings.num_embeddings, self.final_logits_bias
        if size <= old.shape[-1]:
            bias = old[:, :size]
        else:
            bias = torch.cat([old, old.new_zeros(1, size - old.shape[-1])], dim=-1)
        self.final_logits_bias = nn.Buffer(bias.contiguous())
        return embeddings

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
        """``labels`` are the target ids (-100 to ignore a position); without
        ``decoder_input_ids`` the decoder reads them shifted right behind
        ``decoder_start_token_id`` (teacher forcing), and the loss is their cross entropy."""
        if labels is not None:
            use_cache = False  # a training forward: nothing will be decoded after it
            # Each decoder position predicts the label at the same position. Checked before
            # the shift below, which would blame a bad id on decoder_input_ids.
            check_token_labels(
                labels,
                decoder_input_ids,
                decoder_inputs_embeds,
                self.config.vocab_size,
                argument_prefix="decoder_",
            )
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            cache,
            inputs_embeds,
            decoder_inputs_embeds,
            use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states) + self.final_logits_bias.to(hidden_states.dtype)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return Seq2SeqLMOutput(
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

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The decoder inputs that ``labels`` teach: shifted right behind the start token."""
        return shift_tokens_right(
            labels, self.config.pad_token_id, self.config.decoder_start_token_id
        )
