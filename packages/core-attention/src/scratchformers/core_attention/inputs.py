"""What every stack of layers prepares before its first layer, in one place for every model.

A model's forward should read like its architecture: embed, add positions, run the layers,
normalise. Everything around that is the same for every model and lives here:

* :func:`check_config` refuses a config that cannot build a working model (a size of 0, a
  negative norm epsilon, a head count that does not divide) with the field's name, before any
  weight exists. A negative ``layer_norm_eps`` would otherwise give NaN logits without a word.
* :class:`TokenEmbedding` refuses token ids it has no row for (and float or 1-D ids) naming
  ``input_ids``; ``nn.Embedding`` raises an opaque index error on a CPU and a device-side
  assert on a GPU.
* :func:`prepare_attention_inputs` turns ``(config, inputs_embeds, attention_mask, cache,
  position_ids)`` into the position ids and the attention mask that every layer shares, for
  causal or bidirectional attention, after checking that the mask fits the inputs.
* :func:`cross_attention_mask` does the same for attention over an encoder's output.
* :func:`check_labels` refuses labels a loss cannot use (an id at or above ``vocab_size`` or
  ``num_labels``, labels of another shape than the inputs), naming ``labels``, the value or
  shape and the limit, where torch would say "Target 97 is out of bounds" (a device-side
  assert on a GPU) or "Expected input batch_size (14) to match target batch_size (10)".
  :func:`check_token_labels` and :func:`check_classification_labels` call it for a
  language-modelling head and a classifier.

Masks are 0/1 (bool, int or float): a "soft" float mask such as 0.5 would be read as 1 without
a word, so it is refused by every check that reads a 2D mask.

Checks that read values (ids, masks, labels) cost one reduction and a device sync, and are
skipped while ``torch.compile`` traces (they would break the graph); shape and dtype checks
always run.

How default position ids are made is the model's choice (``positions=``):

* ``"padding"``: each row counts its real tokens only, so a left-padded prompt gives the same
  numbers as the unpadded one. Decoders that generate want this (GPT-2, Llama-style models):
  ``generate()`` numbers positions the same way, so a plain forward and a generation step agree.
* ``"count"``: ``0, 1, 2, ...`` after the cached tokens, whatever the padding, as BERT, BART
  and Marian do. A mirrored model must number positions exactly as its reference class, or the
  two disagree on every padded row.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, EncoderDecoderCache

from .masks import build_attention_mask, cache_lengths, check_mask_values
from .positions import position_ids_from_padding_mask

PositionRule = Literal["padding", "count"]

# Sizes that must be at least 1 wherever a config has them (transformers' standard names;
# aliases such as GPT-2's n_embd resolve through the config's attribute_map).
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
)
EPSILON_FIELDS = ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps")


def _field_name(config: PreTrainedConfig, name: str) -> str:
    """The name the user wrote: ``n_head`` rather than ``num_attention_heads`` for GPT-2."""
    return getattr(config, "attribute_map", {}).get(name, name)


def check_config(config: PreTrainedConfig) -> None:
    """Raise a ``ValueError`` naming the field when ``config`` cannot build a working model.

    Checks every standard size it has (at least 1; ``None`` means "derive it" and passes),
    that key/value heads divide the query heads, that the width splits into heads when no
    ``head_dim`` is given, that norm epsilons are positive and that dropout probabilities
    (fields ending in ``dropout`` or ``pdrop``) lie in ``[0, 1)``.
    """
    for name in SIZE_FIELDS:
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{_field_name(config, name)} must be at least 1, got {value}")
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "hidden_size", None)
    if heads and width and getattr(config, "head_dim", None) is None and width % heads:
        raise ValueError(
            f"{_field_name(config, 'hidden_size')}={width} is not divisible by "
            f"{_field_name(config, 'num_attention_heads')}={heads}; change one of them"
            + (" or set head_dim" if hasattr(config, "head_dim") else "")
        )
    kv_heads = getattr(config, "num_key_value_heads", None)
    if heads and kv_heads and heads % kv_heads:
        raise ValueError(
            f"{_field_name(config, 'num_key_value_heads')}={kv_heads} must divide "
            f"{_field_name(config, 'num_attention_heads')}={heads}"
        )
    for name in EPSILON_FIELDS:
        value = getattr(config, name, None)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive (it keeps the norm finite), got {value}")
    for name, value in vars(config).items():
        is_probability = name.endswith(("dropout", "pdrop")) and isinstance(value, int | float)
        if is_probability and not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


class TokenEmbedding(nn.Embedding):
    """The token embedding of a model that reads ``input_ids`` ``(batch, length)``.

    Unlike a bare ``nn.Embedding`` it says what is wrong with ids it cannot embed: float ids,
    ids without a batch dimension, no ids at all, and ids outside ``0 .. vocab_size - 1``.
    ``argument`` is the name the caller gave the ids (``decoder_input_ids`` in a seq2seq
    model), so that the message names what the user passed.
    """

    def forward(self, input_ids: torch.Tensor, argument: str = "input_ids") -> torch.Tensor:
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(
                f"{argument} must hold integer token ids, got dtype {input_ids.dtype} "
                "(call .long() on it, or pass float vectors as inputs_embeds)"
            )
        if input_ids.dim() != 2:
            raise ValueError(
                f"{argument} must be (batch, length), got shape {tuple(input_ids.shape)}; "
                f"for one sequence use {argument}[None]"
            )
        if input_ids.numel() == 0:
            raise ValueError(
                f"{argument} is empty: shape {tuple(input_ids.shape)} (batch, length); "
                "pass at least one sequence of at least one token"
            )
        if not torch.compiler.is_compiling():
            lowest, highest = (int(v) for v in torch.aminmax(input_ids))
            if lowest < 0 or highest >= self.num_embeddings:
                bad = lowest if lowest < 0 else highest
                raise ValueError(
                    f"{argument} holds token id {bad}, outside this model's vocabulary of "
                    f"{self.num_embeddings} tokens (vocab_size={self.num_embeddings}); "
                    "is the tokenizer the model's own?"
                )
        return super().forward(input_ids)


def _self_attention_cache(cache: Cache | None) -> Cache | None:
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


def _check_padding_mask(
    padding_mask: torch.Tensor,
    batch: int,
    length: int,
    past_length: int | torch.Tensor,
    argument: str,
) -> None:
    """The 2D mask must have the inputs' batch, hold 0/1 only and cover the cached tokens plus
    the new ones.

    A static cache's decode loop may pass a mask over the whole buffer (longer), never a
    shorter one: that would leave tokens the mask says nothing about.
    """
    if padding_mask.dim() != 2 or padding_mask.shape[0] != batch:
        raise ValueError(
            f"{argument} must be (batch, keys) = ({batch}, ...) with 1 for tokens and 0 for "
            f"padding, got shape {tuple(padding_mask.shape)} for inputs of batch {batch}"
        )
    if torch.compiler.is_compiling():
        return
    check_mask_values(padding_mask, argument)
    covered = int(past_length) + length
    mask_length = padding_mask.shape[1]
    if mask_length < covered or (int(past_length) == 0 and mask_length != length):
        raise ValueError(
            f"{argument} covers {mask_length} tokens, but the inputs have {length} "
            f"(plus {int(past_length)} cached): it must cover the cached and the new tokens"
        )


def prepare_attention_inputs(
    config: PreTrainedConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None = None,
    *,
    causal: bool,
    positions: PositionRule = "padding",
    argument_prefix: str = "",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The position ids and the self-attention mask that every layer of one stack shares.

    Args:
        config: the model config; its ``_attn_implementation`` decides the mask's form.
        inputs_embeds: ``(batch, length, hidden)``, the embedded new tokens.
        attention_mask: the 2D padding mask (1 = token, 0 = padding) over the cached and the
            new tokens, a prepared 4D mask (used as is), or ``None``.
        cache: the KV cache (its self-attention half in an encoder-decoder), or ``None``.
        position_ids: used as given when passed; else made by the ``positions`` rule.
        causal: decoder self attention (hide later keys) or bidirectional.
        positions: ``"padding"`` or ``"count"``, see the module docstring.
        argument_prefix: how the user names this stack's inputs, for error messages
            (``"decoder_"`` for the decoder of an encoder-decoder: ``decoder_attention_mask``).

    Returns:
        ``(position_ids, mask)``; ``mask`` is ``None`` when nothing has to be hidden, which
        lets sdpa take its fastest kernels.
    """
    batch, length = inputs_embeds.shape[:2]
    if batch == 0 or length == 0:
        raise ValueError(
            f"{argument_prefix}inputs_embeds is empty: shape {tuple(inputs_embeds.shape)} "
            "(batch, length, width); pass at least one sequence of at least one token"
        )
    past_length, key_length = cache_lengths(_self_attention_cache(cache), length)
    padding_mask = None
    if attention_mask is not None and attention_mask.dim() != 4:
        mask_argument = f"{argument_prefix}attention_mask"
        _check_padding_mask(attention_mask, batch, length, past_length, mask_argument)
        padding_mask = attention_mask
    device = inputs_embeds.device
    if position_ids is None and positions == "padding":
        position_ids = position_ids_from_padding_mask(padding_mask, length, past_length, device)
    elif position_ids is None:
        position_ids = (torch.arange(length, device=device) + past_length).unsqueeze(0)
    mask = build_attention_mask(
        attention_mask,
        batch_size=batch,
        query_length=length,
        key_length=key_length,
        causal=causal,
        past_length=past_length,
        device=device,
        attn_implementation=config._attn_implementation,
        dtype=inputs_embeds.dtype,
    )
    return position_ids, mask


def cross_attention_mask(
    config: PreTrainedConfig,
    inputs_embeds: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None,
    *,
    argument: str = "encoder_attention_mask",
) -> torch.Tensor | None:
    """The mask for attention from ``inputs_embeds`` (the decoder's new tokens) over an
    encoder's output: the encoder's padding, with no causal rule. ``argument`` is how the
    user passed the mask (``attention_mask``, the source's, in an encoder-decoder)."""
    if encoder_attention_mask is None or encoder_attention_mask.dim() == 4:
        return encoder_attention_mask
    check_mask_values(encoder_attention_mask, argument)
    batch, length = inputs_embeds.shape[:2]
    return build_attention_mask(
        encoder_attention_mask,
        batch_size=batch,
        query_length=length,
        key_length=encoder_attention_mask.shape[-1],
        causal=False,
        device=inputs_embeds.device,
        attn_implementation=config._attn_implementation,
        dtype=inputs_embeds.dtype,
    )


# ---------------------------------------------------------------------------------------------
# Labels


def check_labels(
    labels: torch.Tensor,
    *,
    shape: tuple[int, ...] | torch.Size | None,
    shape_of: str,
    limit: int | None = None,
    limit_name: str = "vocab_size",
    ignore_index: int = -100,
    argument: str = "labels",
) -> None:
    """Raise a ``ValueError`` naming ``labels`` when a loss cannot be computed from them.

    Args:
        labels: what the user passed.
        shape: the shape they must have; ``None`` when there is nothing to compare with.
        shape_of: what that shape is, for the message (``"input_ids"``, ``"the logits"``).
        limit: ids must lie in ``[0, limit)`` (``ignore_index`` aside) and be integers;
            ``None`` for float targets (regression, multi-label), whose values are not checked.
        limit_name: the config field that sets ``limit`` (``vocab_size``, ``num_labels``).
        ignore_index: the id the loss skips (-100, transformers' default).
        argument: the name the user gave the labels.

    The value check is one reduction (``aminmax``) and is skipped while ``torch.compile``
    traces, as the token-id check is.
    """
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"{argument} must have the shape of {shape_of} {tuple(shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if limit is None:
        return
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"{argument} must hold integer ids in 0 .. {limit - 1} ({limit_name}={limit}), "
            f"got dtype {labels.dtype}"
        )
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    # Ignored positions count as 0, so that the one reduction finds every other bad id.
    kept = torch.where(labels == ignore_index, 0, labels)
    lowest, highest = (int(v) for v in torch.aminmax(kept))
    if lowest < 0 or highest >= limit:
        bad = lowest if lowest < 0 else highest
        raise ValueError(
            f"{argument} holds {bad}, outside 0 .. {limit - 1} ({limit_name}={limit}); "
            f"{ignore_index} marks what the loss ignores"
        )


def check_token_labels(
    labels: torch.Tensor,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    vocab_size: int,
    *,
    argument_prefix: str = "",
) -> None:
    """:func:`check_labels` for a language-modelling head, before its forward: a token id (or
    -100) for each position of ``input_ids`` (or of ``inputs_embeds``), below ``vocab_size``.

    A seq2seq head passes its decoder inputs with ``argument_prefix="decoder_"``; when it has
    none (its decoder reads the labels shifted right) only the ids are checked.
    """
    if input_ids is not None:
        shape, shape_of = input_ids.shape, f"{argument_prefix}input_ids"
    elif inputs_embeds is not None:
        shape, shape_of = (
            inputs_embeds.shape[:2],
            f"{argument_prefix}inputs_embeds' (batch, length)",
        )
    else:
        shape, shape_of = None, ""
    check_labels(labels, shape=shape, shape_of=shape_of, limit=vocab_size)


def classification_problem_type(config: PreTrainedConfig, labels: torch.Tensor) -> str:
    """The loss a classifier computes for ``labels``, as transformers decides it:
    ``config.problem_type`` when set, else regression for one label, single-label
    classification for integer labels and multi-label classification for the rest."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if config.num_labels > 1 and labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def check_classification_labels(
    labels: torch.Tensor, logits: torch.Tensor, config: PreTrainedConfig
) -> None:
    """:func:`check_labels` for a sequence or image classifier with ``logits`` ``(batch,
    num_labels)``, by the problem type the loss will use (see
    :func:`classification_problem_type`):

    * single-label: a class id in ``0 .. num_labels - 1`` (or -100) per example, ``(batch,)``;
    * regression: any floats, ``(batch,)`` for one label, else the logits' shape;
    * multi-label: floats (0/1 targets, not range-checked) of the logits' shape.

    ``(batch, 1)`` is taken where ``(batch,)`` is, as transformers' loss flattens it.
    """
    problem_type = classification_problem_type(config, labels)
    batch = logits.shape[0]
    if problem_type == "single_label_classification" or (
        problem_type == "regression" and config.num_labels == 1
    ):
        shape, shape_of = (batch,), "the logits' batch"
        if tuple(labels.shape) == (batch, 1):
            shape = (batch, 1)
    else:
        shape, shape_of = logits.shape, "the logits"
    if problem_type == "multi_label_classification" and not labels.is_floating_point():
        raise ValueError(
            f"labels must be float 0/1 targets for multi-label classification, got dtype "
            f"{labels.dtype}: call .float() on them, or set problem_type="
            '"single_label_classification" for one class id per example'
        )
    single_label = problem_type == "single_label_classification"
    limit = config.num_labels if single_label else None
    check_labels(labels, shape=shape, shape_of=shape_of, limit=limit, limit_name="num_labels")
