"""Multi-head attention: the one attention layer of every scratchformers model.

One class covers encoder self attention (bidirectional), decoder self attention (causal, with
a KV cache), decoder cross attention (queries from the decoder, keys/values from the encoder,
computed once per sequence), vision encoders and both CLIP towers. Grouped-query and
multi-query attention come from ``num_key_value_heads``.

The KV cache is transformers' own (``DynamicCache``, ``StaticCache``, ``EncoderDecoderCache``),
passed in as ``cache`` with this layer's ``layer_idx``, so ``generate()`` and every cache-aware
tool work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, EncoderDecoderCache

from .functional import attention_function
from .positions import apply_rotary


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, for self or cross attention.

    Args:
        hidden_size: width of the queries' input (and of the output).
        num_attention_heads: number of query heads.
        num_key_value_heads: number of key/value heads; equal to ``num_attention_heads`` for
            multi-head attention (the default), 1 for multi-query, anything dividing it for
            grouped-query attention.
        head_dim: width of one head; defaults to ``hidden_size // num_attention_heads``.
        config: the model config. Its ``_attn_implementation`` picks the backend at each call
            (``"sdpa"`` when unset), so ``from_pretrained(..., attn_implementation="eager")``
            and ``model.set_attn_implementation(...)`` work as in transformers.
        is_causal: hide future keys (decoder self attention).
        is_cross_attention: keys and values come from ``key_value_states`` (the encoder).
        key_value_size: width of the keys' and values' input; defaults to ``hidden_size``
            (set it for cross attention over an encoder of another width).
        q_bias, k_bias, v_bias, o_bias: a bias on each projection.
        dropout: dropout on the attention probabilities, in training only.
        scaling: factor on the scores; defaults to ``head_dim ** -0.5``.
        layer_idx: this layer's index in the cache; required when a cache is used.
    """

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        *,
        config: PreTrainedConfig | None = None,
        is_causal: bool = False,
        is_cross_attention: bool = False,
        key_value_size: int | None = None,
        q_bias: bool = True,
        k_bias: bool = True,
        v_bias: bool = True,
        o_bias: bool = True,
        dropout: float = 0.0,
        scaling: float | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        num_key_value_heads = num_key_value_heads or num_attention_heads
        if head_dim is None:
            if hidden_size % num_attention_heads:
                raise ValueError(
                    f"hidden_size={hidden_size} is not divisible by "
                    f"num_attention_heads={num_attention_heads}; change one or set head_dim"
                )
            head_dim = hidden_size // num_attention_heads
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={num_key_value_heads} must divide "
                f"num_attention_heads={num_attention_heads}"
            )
        if is_causal and is_cross_attention:
            raise ValueError("cross attention cannot be causal: the encoder's keys have no order")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")

        self.config = config
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.num_key_value_groups = num_attention_heads // num_key_value_heads
        self.head_dim = head_dim
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.dropout = dropout
        self.scaling = head_dim**-0.5 if scaling is None else scaling
        self.layer_idx = layer_idx

        key_value_size = key_value_size or hidden_size
        self.q_proj = nn.Linear(hidden_size, num_attention_heads * head_dim, bias=q_bias)
        self.k_proj = nn.Linear(key_value_size, num_key_value_heads * head_dim, bias=k_bias)
        self.v_proj = nn.Linear(key_value_size, num_key_value_heads * head_dim, bias=v_bias)
        self.o_proj = nn.Linear(num_attention_heads * head_dim, hidden_size, bias=o_bias)
        # (weight, bias) of q, k and v stacked, set only while a generate() runs on a CPU: one
        # product instead of three (see layout.packed_query_key_value).
        self.packed_qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def attn_implementation(self) -> str:
        """The backend in use: the config's ``_attn_implementation``, else ``"sdpa"``."""
        configured = getattr(self.config, "_attn_implementation", None)
        return configured or "sdpa"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        key_value_states: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``hidden_states`` ``(batch, queries, hidden_size)``.

        Args:
            attention_mask: from :func:`~scratchformers.core_attention.build_attention_mask`
                (or ``None``: no mask, causal through ``is_causal``).
            key_value_states: the encoder output, for cross attention. May be omitted once
                the cache holds this layer's cross-attention keys and values.
            position_embeddings: ``(cos, sin)`` from ``RotaryEmbedding`` to rotate queries and
                keys (self attention only).
            cache: a transformers ``Cache``; an ``EncoderDecoderCache`` in encoder-decoder
                models. Self-attention keys/values are appended to it; cross-attention ones
                are stored once and reused.
            **kwargs: passed to the attention function. With ``output_attentions=True`` (or the
                config's ``output_attentions``), a backend that returns no probabilities is an
                error rather than an empty result.

        Returns:
            ``(output, probabilities)``: output ``(batch, queries, hidden_size)``, and the
            attention probabilities ``(batch, heads, queries, keys)`` from the eager backend
            (``None`` from sdpa).
        """
        batch, query_length, _ = hidden_states.shape
        if cache is not None and self.layer_idx is None:
            raise ValueError("a cache was passed to an Attention built without layer_idx")

        if self.is_cross_attention:
            query = self._split_heads(self.q_proj(hidden_states))
            key, value = self._cross_attention_keys_values(key_value_states, cache)
        else:
            query, key, value = map(self._split_heads, self._query_key_value(hidden_states))
            if position_embeddings is not None:
                query, key = apply_rotary(query, key, *position_embeddings)
            if cache is not None:
                self_cache = (
                    cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                )
                key, value = self_cache.update(key, value, self.layer_idx)

        attend = attention_function(self.attn_implementation)
        output, probabilities = attend(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        if probabilities is None and self._probabilities_requested(kwargs):
            raise ValueError(
                f"output_attentions needs the eager backend, but attn_implementation="
                f"{self.attn_implementation!r} returns no attention probabilities; load the model "
                "with attn_implementation='eager' or call model.set_attn_implementation('eager')"
            )
        output = output.reshape(batch, query_length, -1)
        return self.o_proj(output), probabilities

    def _probabilities_requested(self, kwargs: dict[str, object]) -> bool:
        # Models pass their keyword arguments down to every layer, so a call's
        # output_attentions arrives here; without one, the config's default applies.
        requested = kwargs.get("output_attentions")
        if requested is None:
            requested = getattr(self.config, "output_attentions", False)
        return bool(requested)

    def _query_key_value(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.packed_qkv is None:
            return (
                self.q_proj(hidden_states),
                self.k_proj(hidden_states),
                self.v_proj(hidden_states),
            )
        widths = (self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features)
        return F.linear(hidden_states, *self.packed_qkv).split(widths, dim=-1)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """``(batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)``."""
        batch, length, _ = states.shape
        return states.view(batch, length, -1, self.head_dim).transpose(1, 2)

    def _cross_attention_keys_values(
        self, key_value_states: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the encoder output, or reuse the projection stored in the cache.

        The encoder output does not change while the decoder generates, so its keys and values
        are computed at the first step, stored in the cross-attention half of the
        ``EncoderDecoderCache``, and read back at every later step.
        """
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise ValueError(
                f"cross attention needs an EncoderDecoderCache to keep the encoder's keys and "
                f"values, got {type(cache).__name__}"
            )
        if cache is not None and cache.is_updated.get(self.layer_idx, False):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        if key_value_states is None:
            raise ValueError(
                "cross attention needs key_value_states (the encoder output) on the first step"
            )
        key = self._split_heads(self.k_proj(key_value_states))
        value = self._split_heads(self.v_proj(key_value_states))
        if cache is not None:
            key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key, value
