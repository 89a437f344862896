"""``translate``: texts in, texts out, in one call (transformers 5 has no translation pipeline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel


def translate(
    model: PreTrainedModel, tokenizer: Any, texts: Sequence[str], **generate_kwargs: Any
) -> list[str]:
    """Translate (or summarise, or whatever the model was trained to do) ``texts``.

    Tokenizes the batch with padding (the source padding mask goes to the model), runs
    ``model.generate(**generate_kwargs)`` (``num_beams=``, ``max_new_tokens=``, ...) and decodes
    the outputs without special tokens, one string per text, in order.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; for one text pass [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: pass at least one text to translate")
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    inputs = {
        name: inputs[name].to(model.device)
        for name in ("input_ids", "attention_mask")
        if name in inputs
    }
    with torch.no_grad():
        outputs = model.generate(**inputs, **generate_kwargs)
    return tokenizer.batch_decode(outputs, skip_special_tokens=True)
