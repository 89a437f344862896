"""Every attention backend the core supports is reachable through from_pretrained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scratchformers.gpt2 import GPT2LMHeadModel


@pytest.fixture
def our_directory(make_config: Callable, tmp_path: Path) -> Path:
    GPT2LMHeadModel(make_config()).save_pretrained(tmp_path)
    return tmp_path


def test_flex_attention_is_accepted_by_from_pretrained(our_directory: Path) -> None:
    loaded = GPT2LMHeadModel.from_pretrained(our_directory, attn_implementation="flex_attention")
    assert loaded.config._attn_implementation == "flex_attention"
    assert {block.attn.attn_implementation for block in loaded.transformer.h} == {"flex_attention"}


def test_a_backend_whose_kernels_are_missing_fails_with_transformers_message(
    our_directory: Path,
) -> None:
    with pytest.raises(ImportError, match="FlashAttention2"):
        GPT2LMHeadModel.from_pretrained(our_directory, attn_implementation="flash_attention_2")


def test_attentions_from_sdpa_fail_loudly(our_directory: Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(our_directory, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="output_attentions needs the eager backend"):
        model(torch.tensor([[3, 4, 5]]), output_attentions=True)


def test_return_dict_false_gives_transformers_tuples(our_directory: Path) -> None:
    model = GPT2LMHeadModel.from_pretrained(our_directory)
    ids = torch.tensor([[3, 4, 5]])
    as_dict = model(ids, labels=ids)
    as_tuple = model(ids, labels=ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
