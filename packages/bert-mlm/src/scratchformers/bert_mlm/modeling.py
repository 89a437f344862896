"""BERT, top to bottom: embeddings, the post-norm encoder layer, the stack with its pooler, the
masked-LM head and the sequence-classification head.

Module names follow transformers' BERT where the layout allows (``bert.embeddings.
word_embeddings``, ``bert.encoder.layer.<i>``, ``bert.pooler.dense``, ``classifier``), so its
checkpoints map onto ours by renames only (see ``convert.py``): attention is the shared core's
``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``, the feed-forward is ``mlp.up_proj`` /
``mlp.down_proj`` as in every scratchformers model, and the norms sit in the layer
(``attention_norm``, ``mlp_norm``) rather than in transformers' ``*.output`` modules. Attention,
masks, positions and input checks come from ``scratchformers.core_attention``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from scratchformers.core_attention import (
    Attention,
    ConvertsCheckpoints,
    LearnedPositionalEmbedding,
    TokenEmbedding,
    activation,
    check_classification_labels,
    check_token_labels,
    prepare_attention_inputs,
)

from .configuration import BertConfig
from .convert import CONVERTER


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # padding_idx as in transformers: the padding row gets no gradient.
        self.word_embeddings = TokenEmbedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = LearnedPositionalEmbedding(
            config.max_position_embeddings, config.hidden_size
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        if token_type_ids is None:
            # Segment A everywhere, transformers' default: its one row, broadcast, rather than
            # a lookup of a zero per token (a batch-sized tensor, and a scatter in the backward).
            token_types = self.token_type_embeddings.weight[0]
        else:
            self._check_token_types(token_type_ids, tuple(inputs_embeds.shape[:2]))
            token_types = self.token_type_embeddings(token_type_ids)
        embeddings = inputs_embeds + token_types + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))

    def _check_token_types(self, token_type_ids: torch.Tensor, shape: tuple[int, int]) -> None:
        """Name the argument, rather than failing with an index error (or a device-side assert
        on a GPU) inside ``nn.Embedding``."""
        if token_type_ids.is_floating_point() or token_type_ids.dtype == torch.bool:
            raise ValueError(f"token_type_ids must hold integers, got dtype {token_type_ids.dtype}")
        if tuple(token_type_ids.shape) != shape:
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {shape}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        if torch.compiler.is_compiling():
            return
        lowest, highest = (int(v) for v in torch.aminmax(token_type_ids))
        limit = self.token_type_embeddings.num_embeddings
        if lowest < 0 or highest >= limit:
            bad = lowest if lowest < 0 else highest
            raise ValueError(
                f"token_type_ids holds {bad}, outside 0 .. {limit - 1} (type_vocab_size={limit})"
            )


class BertMLP(nn.Module):
    """The feed-forward: ``down_proj(act(up_proj(x)))``, then dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.up_proj(hidden_states))))


class BertLayer(GradientCheckpointingLayer):
    """Post-norm layer: ``x = norm(x + attention(x))``, then ``x = norm(x + mlp(x))``."""

    def __init__(self, config: BertConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config=config,
            is_causal=False,
            dropout=config.attention_probs_dropout_prob,
            layer_idx=layer_idx,
        )
        self.attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BertMLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        attended, _ = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = self.attention_norm(hidden_states + self.attention_dropout(attended))
        hidden_states = self.mlp_norm(hidden_states + self.mlp(hidden_states))
        return hidden_states


class BertEncoder(nn.Module):
    """The stack of layers (a module of its own so that keys read ``encoder.layer.<i>``)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i) for i in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the first token's ([CLS]) final state, transformed."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class BertPreTrainedModel(ConvertsCheckpoints, PreTrainedModel):
    """Shared by the BERT classes: config, init, backends, output recording, loading."""

    config_class = BertConfig
    checkpoint_converters = (CONVERTER,)  # from_pretrained reads transformers' BERT too
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    # Every backend the core's Attention can call; transformers checks each one's kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # output_hidden_states / output_attentions are recorded by transformers' hooks.
    _can_record_outputs = {"hidden_states": BertLayer, "attentions": Attention}


class BertModel(BertPreTrainedModel):
    """Embeddings, ``num_hidden_layers`` post-norm layers and (optionally) the pooler.

    ``add_pooling_layer=False`` leaves the pooler out, as transformers' ``BertForMaskedLM``
    does; a checkpoint without one (``pooler.dense``) loads only into such a model.
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        config.check()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BaseModelOutputWithPooling:
        """``attention_mask`` is 1 for tokens and 0 for padding; ``token_type_ids`` (segment
        ids) default to zeros; positions count 0, 1, 2, ... in every row, as in transformers."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        position_ids, mask = prepare_attention_inputs(
            self.config,
            inputs_embeds,
            attention_mask,
            None,
            position_ids,
            causal=False,
            positions="count",
        )

        hidden_states = self.embeddings(inputs_embeds, position_ids, token_type_ids)
        for layer in self.encoder.layer:
            hidden_states = layer(hidden_states, mask, **kwargs)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


class BertMLMHead(nn.Module):
    """``decoder(LayerNorm(act(dense(h))))``; the decoder's weight is the word embedding's
    (tied), its bias is its own.

    ``bias`` is the decoder's bias under the name transformers stores it by
    (``cls.predictions.bias``): with tied embeddings the two are one tensor; with
    ``tie_word_embeddings=False`` they are two, and, as in transformers, the decoder's is the
    one used.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden_states))))


class BertForMaskedLM(BertPreTrainedModel):
    """BERT (without the pooler, as in transformers) with the masked-language-model head."""

    # transformers' ties: the decoder weight is the word embedding, its bias the head's bias.
    _tied_weights_keys = {
        "cls.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.decoder.bias": "cls.bias",
    }

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertMLMHead(config)
        self.loss_type = "ForMaskedLM"  # cross entropy over the labelled (!= -100) tokens
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.decoder = new_embeddings
        self.cls.bias = new_embeddings.bias

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BertMLMHead):
            init.zeros_(module.bias)  # transformers' BERT starts the bias at zero

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: object,
    ) -> MaskedLMOutput:
        """``labels`` hold the original ids at masked positions and -100 elsewhere."""
        if labels is not None:
            check_token_labels(labels, input_ids, inputs_embeds, self.config.vocab_size)
        outputs = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with dropout and a linear classifier on the pooled output.

    The loss follows ``config.problem_type`` as in transformers: mean squared error for
    ``"regression"``, cross entropy for ``"single_label_classification"``, binary cross
    entropy with logits for ``"multi_label_classification"``; when unset it is inferred from
    ``num_labels`` and the labels' dtype (and written to the config), as transformers does.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.loss_type = "ForSequenceClassification"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> SequenceClassifierOutput:
        """``labels``: class ids ``(batch,)``, floats ``(batch,)`` / ``(batch, num_labels)``
        for regression, or 0/1 floats ``(batch, num_labels)`` for multi-label."""
        outputs = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            check_classification_labels(labels, logits, self.config)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
