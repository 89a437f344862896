"""Every attention backend the core supports is reachable through from_pretrained, and the
eager backend gives sdpa's numbers on a padded batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformers.bert_mlm import BertForMaskedLM


@pytest.fixture
def our_directory(make_config: Callable, tmp_path: Path) -> Path:
    BertForMaskedLM(make_config(initializer_range=0.2)).save_pretrained(tmp_path)
    return tmp_path


def test_flex_attention_is_accepted_by_from_pretrained(our_directory: Path) -> None:
    loaded = BertForMaskedLM.from_pretrained(our_directory, attn_implementation="flex_attention")
    assert loaded.config._attn_implementation == "flex_attention"
    layers = loaded.bert.encoder.layer
    assert {layer.attention.attn_implementation for layer in layers} == {"flex_attention"}


def test_a_backend_whose_kernels_are_missing_fails_with_transformers_message(
    our_directory: Path,
) -> None:
    with pytest.raises(ImportError, match="FlashAttention2"):
        BertForMaskedLM.from_pretrained(our_directory, attn_implementation="flash_attention_2")


def test_eager_gives_the_logits_of_sdpa(our_directory: Path, padded_batch: Callable) -> None:
    input_ids, mask, types = padded_batch()
    logits = {}
    for backend in ("sdpa", "eager"):
        model = BertForMaskedLM.from_pretrained(our_directory, attn_implementation=backend).eval()
        with torch.no_grad():
            logits[backend] = model(input_ids, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=0)
