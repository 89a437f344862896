"""Attention masks, built in one place for every model.

Vocabulary used throughout scratchformers:

* A *padding mask* is what tokenizers return: shape ``(batch, keys)``, ``1`` for a real token
  and ``0`` for padding. It covers every key the queries may see, so during cached decoding it
  spans the cached tokens plus the new ones.
* An *attention mask* is what the attention functions receive: a boolean tensor of shape
  ``(batch, 1, queries, keys)`` where ``True`` means "this query may look at this key", or
  ``None`` when nothing has to be hidden and the backend may use its fastest path (sdpa's
  ``is_causal`` flag for causal self attention, no mask at all for everything else).

Query ``i`` of the current step sits at absolute position ``past_length + i``; keys are
numbered from 0, so with a KV cache the causal rule is ``key <= past_length + i``. Keys beyond
the tokens seen so far (the empty tail of a ``StaticCache``) are hidden by that same rule, and
by the padding mask, which is padded with zeros up to the key length.

A query whose keys are all hidden (a left-padding position in a causal model) is legal: both
backends return zeros for it, never NaN.

A padding mask is 0/1, as bool, int or float. Anything else (a "soft" 0.5, a 2) would be read
as 1 without a word, so :func:`check_mask_values` refuses it.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

# Implementations that receive the 2D padding mask and un-pad internally (flash attention).
_PADDING_MASK_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Implementations that add the mask to the scores and cannot take a boolean one.
_ADDITIVE_MASK_IMPLEMENTATIONS = ("flex_attention",)


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_mask_values(padding_mask: torch.Tensor, argument: str = "attention_mask") -> None:
    """Raise a ``ValueError`` naming ``argument`` and the value when a 2D padding mask holds
    anything but 0 and 1.

    Masks are read as ``mask.bool()``, so a soft mask (0.5 for "half attend") or a 2 would
    silently count as 1. Two comparisons and one reduction; nothing to do for a bool mask,
    and skipped while ``torch.compile`` traces (the device sync would break the graph).
    """
    if padding_mask.dtype == torch.bool or _is_compiling():
        return
    other = (padding_mask != 0) & (padding_mask != 1)  # NaN is neither
    if bool(other.any()):
        bad = padding_mask[other][0].item()
        shown = f"{bad:g}" if isinstance(bad, float) else str(bad)  # 0.3, not 0.30000001...
        raise ValueError(
            f"{argument} holds {shown}, but masks are 0/1 (bool, int or float): 1 for a token "
            "to attend to, 0 for padding; soft (fractional) masks are not supported"
        )


def causal_mask(
    query_length: int,
    key_length: int,
    past_length: int | torch.Tensor = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(query_length, key_length)`` mask: query ``i`` sees keys ``0 .. past_length + i``."""
    query_positions = torch.arange(query_length, device=device) + past_length
    key_positions = torch.arange(key_length, device=device)
    return key_positions[None, :] <= query_positions[:, None]


def cache_lengths(cache: Cache | None, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
    """``(past_length, key_length)`` for a self-attention step of ``query_length`` new tokens.

    Read from the cache *before* the layers append to it: ``past_length`` tokens are cached
    already, and the attention will see ``key_length`` keys (cached plus new for a
    ``DynamicCache``, the whole buffer for a ``StaticCache``).
    """
    if cache is None:
        return 0, query_length
    past_length = cache.get_seq_length(layer_idx)
    key_length, _ = cache.get_mask_sizes(query_length, layer_idx)
    return past_length, key_length


def _padding_to_key_length(padding_mask: torch.Tensor, key_length: int) -> torch.Tensor:
    """Check a 2D padding mask against the keys and right-pad it with zeros for a static cache."""
    if padding_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be 2D (batch, keys) with 1 for tokens and 0 for padding, "
            f"got shape {tuple(padding_mask.shape)}"
        )
    mask_length = padding_mask.shape[1]
    if mask_length > key_length:
        raise ValueError(
            f"attention_mask covers {mask_length} tokens but the attention only has {key_length} keys; "
            "with a cache, the mask must cover the cached tokens plus the new ones, no more"
        )
    padding_mask = padding_mask.bool()
    if mask_length < key_length:
        padding_mask = torch.nn.functional.pad(
            padding_mask, (0, key_length - mask_length), value=False
        )
    return padding_mask


def build_attention_mask(
    padding_mask: torch.Tensor | None,
    *,
    batch_size: int,
    query_length: int,
    key_length: int,
    causal: bool,
    past_length: int | torch.Tensor = 0,
    device: torch.device | str | None = None,
    attn_implementation: str | None = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """Build the mask that every attention layer of one forward pass shares.

    Args:
        padding_mask: ``(batch, keys_seen)`` with 1 = token, 0 = padding; ``None`` for no padding.
            A 4D tensor is taken as an already prepared attention mask and returned unchanged
            (``generate()`` prepares one itself when it uses a ``StaticCache``).
        batch_size, query_length, key_length: the attention's shape. ``key_length`` counts the
            cached keys too (for a ``StaticCache``: its full length).
        causal: hide keys that lie after the query (decoder self attention).
        past_length: how many tokens the cache held before this step.
        device: where to build the mask.
        attn_implementation: the backend the mask is for. ``eager``, ``sdpa`` and custom
            functions get the boolean 4D mask; ``flex_attention`` an additive float mask;
            ``flash_attention_*`` the 2D padding mask, which they un-pad with.
        dtype: the float dtype of an additive mask.

    Returns:
        ``None`` when nothing must be hidden (no padding, and either not causal, or causal with
        one query per key or a single query that may see every key), else the mask.
    """
    if padding_mask is not None and padding_mask.dim() == 4:
        return padding_mask
    if padding_mask is not None:
        if padding_mask.shape[0] != batch_size:
            raise ValueError(
                f"attention_mask has batch size {padding_mask.shape[0]} but the inputs have {batch_size}"
            )
        padding_mask = _padding_to_key_length(padding_mask.to(device), key_length)
        # Checking for "no padding at all" costs a device sync; it pays for itself by letting
        # sdpa pick its fused kernels, but under torch.compile we keep the mask to stay traceable.
        if not _is_compiling() and bool(padding_mask.all()):
            padding_mask = None

    if attn_implementation in _PADDING_MASK_IMPLEMENTATIONS:
        return padding_mask

    # sdpa's `is_causal` flag (top-left aligned) is only right when queries and keys line up, or
    # for one query that may see every key; flex attention has no such flag and always needs a mask.
    causal_without_mask = causal and (
        query_length == key_length
        or (query_length == 1 and _sees_every_key(past_length, key_length))
    )
    flex_needs_causal_mask = causal and attn_implementation in _ADDITIVE_MASK_IMPLEMENTATIONS
    if padding_mask is None and (not causal or causal_without_mask) and not flex_needs_causal_mask:
        return None

    mask = torch.ones(batch_size, 1, query_length, key_length, dtype=torch.bool, device=device)
    if causal:
        mask = mask & causal_mask(query_length, key_length, past_length, device)
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, :]

    if attn_implementation in _ADDITIVE_MASK_IMPLEMENTATIONS:
        return to_additive_mask(mask, dtype)
    return mask


def _sees_every_key(past_length: int | torch.Tensor, key_length: int) -> bool:
    # A single new token may see all keys only if none of them is an empty static-cache slot.
    if isinstance(past_length, torch.Tensor):
        if _is_compiling():
            return False
        past_length = int(past_length)
    return past_length + 1 == key_length


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean mask (``True`` = attend) into one that is added to the scores.

    Hidden positions get the dtype's most negative finite value rather than ``-inf``, so that
    no arithmetic on a fully hidden row can produce NaN.
    """
    hidden = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), hidden)


def create_masks_for_generate(
    config: object,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None = None,
    **kwargs: object,
) -> torch.Tensor | None:
    """The causal self-attention mask for ``generate()``, built by :func:`build_attention_mask`.

    ``generate()`` prepares the mask itself before each step when the cache is static (so a
    compiled forward sees fixed shapes), calling ``model.create_masks_for_generate`` when the
    model has one. Decoder models set ``create_masks_for_generate =
    staticmethod(create_masks_for_generate)`` so that this mask, too, comes from the one
    builder. ``inputs_embeds`` only gives the batch size, query length, dtype and device.
    """
    batch_size, query_length = inputs_embeds.shape[:2]
    past_length, key_length = cache_lengths(cache, query_length)
    if attention_mask is not None and attention_mask.dim() == 2:
        check_mask_values(attention_mask)
    return build_attention_mask(
        attention_mask,
        batch_size=batch_size,
        query_length=query_length,
        key_length=key_length,
        causal=True,
        past_length=past_length,
        device=inputs_embeds.device,
        attn_implementation=getattr(config, "_attn_implementation", None) or "sdpa",
        dtype=inputs_embeds.dtype,
    )
