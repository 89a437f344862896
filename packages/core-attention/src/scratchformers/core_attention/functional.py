"""The attention math: two backends with one calling convention.

Both functions follow the convention of transformers' ``AttentionInterface``::

    fn(module, query, key, value, attention_mask, *, dropout, scaling, **kwargs)
        -> (output, probabilities or None)

with ``query`` ``(batch, heads, queries, head_dim)``, ``key``/``value``
``(batch, kv_heads, keys, head_dim)`` and ``output`` ``(batch, queries, heads, head_dim)``.
``attention_mask`` is ``None``, a boolean mask (``True`` = attend) or an additive float mask,
broadcastable to ``(batch, heads, queries, keys)``. When it is ``None`` and
``module.is_causal`` is set, attention is causal (for more than one query).

Because the convention is shared, :func:`attention_function` can hand back any function that
is registered in transformers' ``AttentionInterface`` (``flex_attention``, ``flash_attention_2``
where installed, or your own), and the models call it the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .masks import causal_mask

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: ``(batch, kv_heads, seq, dim) -> (batch, kv_heads * groups, seq, dim)``,
    each key/value head shared by ``groups`` consecutive query heads."""
    if groups == 1:
        return states
    batch, kv_heads, length, dim = states.shape
    states = states[:, :, None].expand(batch, kv_heads, groups, length, dim)
    return states.reshape(batch, kv_heads * groups, length, dim)


def _is_causal(module: nn.Module, attention_mask: torch.Tensor | None, query_length: int) -> bool:
    # One query may see every key it is given, so causality only matters for several queries.
    return attention_mask is None and query_length > 1 and getattr(module, "is_causal", False)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention spelled out: scores, mask, softmax, dropout, weighted sum.

    Returns the attention probabilities too, ``(batch, heads, queries, keys)``, for
    ``output_attentions``. A query whose keys are all hidden gets all-zero probabilities (and a
    zero output), exactly as sdpa does.
    """
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling

    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if _is_causal(module, attention_mask, query.shape[2]):
        attention_mask = causal_mask(query.shape[2], key.shape[2], device=query.device)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        hidden = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~attention_mask, hidden)
    elif attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[2]]

    # Softmax in float32: in half precision the exponentials of large scores lose too much.
    probabilities = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # Exact zeros for hidden keys; only changes rows whose every key is hidden.
        probabilities = probabilities.masked_fill(~attention_mask, 0.0)
    probabilities = F.dropout(probabilities, p=dropout, training=dropout > 0)

    output = torch.matmul(probabilities, value)
    return output.transpose(1, 2).contiguous(), probabilities


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The same math through ``torch.nn.functional.scaled_dot_product_attention``.

    PyTorch picks a fused kernel (flash, memory-efficient, or its CPU flash kernel) where it
    can. It cannot return probabilities, so the second result is ``None``.
    """
    batch, heads, query_length, head_dim = query.shape
    groups = heads // key.shape[1]
    gqa: dict[str, bool] = {}
    grouped_queries = False
    if groups > 1:
        # Without a mask sdpa's native GQA keeps the fused kernels; with one, several kernels
        # only support equal head counts, so expand keys and values instead (one decoding
        # query aside: see below).
        if attention_mask is None:
            gqa["enable_gqa"] = True
        elif query_length == 1 and _shared_or_per_head(attention_mask, heads):
            # Decoding one token: the query heads sharing a key/value head become that head's
            # `groups` queries, so the cached keys and values are read where they are rather
            # than copied `groups` times at every step.
            query = query.reshape(batch, heads // groups, groups, head_dim)
            if attention_mask.shape[1] == heads:
                attention_mask = attention_mask.reshape(
                    -1, heads // groups, groups, attention_mask.shape[-1]
                )
            grouped_queries = True
        else:
            key, value = repeat_kv(key, groups), repeat_kv(value, groups)

    if is_causal is None:
        is_causal = _is_causal(module, attention_mask, query_length)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        # Clamp before casting: float32's most negative value is -inf in bfloat16 and float16.
        hidden = torch.finfo(query.dtype).min
        attention_mask = attention_mask[..., : key.shape[2]].clamp(min=hidden).to(query.dtype)

    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        **gqa,
    )
    if grouped_queries:
        output = output.reshape(batch, heads, query_length, -1)  # value's width, per head
    return output.transpose(1, 2).contiguous(), None


def _shared_or_per_head(attention_mask: torch.Tensor, heads: int) -> bool:
    """A 4-D mask for one query, the same for every head or one per head (what grouping the
    queries by key/value head can rearrange)."""
    return (
        attention_mask.dim() == 4
        and attention_mask.shape[1] in (1, heads)
        and attention_mask.shape[2] == 1
    )


OUR_IMPLEMENTATIONS: dict[str, AttentionFunction] = {
    "sdpa": sdpa_attention_forward,
    "eager": eager_attention_forward,
}


def attention_function(attn_implementation: str | None) -> AttentionFunction:
    """The attention function for a ``config._attn_implementation`` name.

    ``"sdpa"`` (also the default for ``None``) and ``"eager"`` are the two written here; any
    other name is looked up in transformers' ``AttentionInterface`` registry, so
    ``AttentionInterface.register("mine", fn)`` makes ``attn_implementation="mine"`` work.
    """
    name = attn_implementation or "sdpa"
    if name in OUR_IMPLEMENTATIONS:
        return OUR_IMPLEMENTATIONS[name]
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    known = sorted({*OUR_IMPLEMENTATIONS, *ALL_ATTENTION_FUNCTIONS.valid_keys()})
    raise ValueError(
        f"attn_implementation={name!r} is not known; choose one of {known} or register a "
        "function with transformers.AttentionInterface.register(name, fn)"
    )
